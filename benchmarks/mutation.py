"""Mutation score of the modules that compute dlmbench's numbers.

A test suite that passes says little until a wrong number makes it fail. This script
plants small bugs (mutmut's mutants: a flipped operator, a changed constant, a dropped
argument) one at a time in the loss, schedule, sampler and metric modules of the core and
the three plugins, runs the tests that reach the mutated function, and writes the share
of mutants some test kills, per module, with every survivor's diff, to
``benchmarks/results/mutation.json``.

mutmut (https://github.com/boxed/mutmut, 3.x) is used as is: it rewrites each function
into a trampoline holding all its mutants, records which tests reach which function in
one instrumented run, then forks one worker per mutant from a server that has imported
torch once. It imports the mutated code from ``mutants/`` at the root of its working
directory, so the packages are staged there under their import names (``dlmbench``,
``dlmbench_elf``, ...), with the tests beside them; the staging directory is kept
between runs so that a rerun only re-tests the functions whose source changed.

A survivor is either killed by a new test or listed in
``benchmarks/mutation_equivalent.json`` with the reason no test can kill it (the
mutant computes the same thing, or only differs on a device the suite has not). Such
mutants are reported, and left out of the kill rate's denominator.

    pip install -e '.[mutation]'                              # mutmut, pinned
    python benchmarks/mutation.py                             # every module in scope
    python benchmarks/mutation.py --modules dlmbench_mdlm/samplers.py,dlmbench/schedule.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SCRIPT = "mutation"
ROOT = C.HERE.parent
EQUIVALENT = C.HERE / "mutation_equivalent.json"
TARGET = 0.90

# The staged package name of each source package (the import name mutmut must see).
PACKAGES = {
    "dlmbench": ROOT / "dlmbench",
    "dlmbench_elf": ROOT / "plugins" / "elf" / "dlmbench_elf",
    "dlmbench_mdlm": ROOT / "plugins" / "mdlm" / "dlmbench_mdlm",
    "dlmbench_duo": ROOT / "plugins" / "duo" / "dlmbench_duo",
}

# The modules that compute numbers: losses, schedules, samplers, metrics (issue 16).
MODULES = [
    "dlmbench/schedule.py", "dlmbench/categorical.py", "dlmbench/sampling.py", "dlmbench/bound.py",
    "dlmbench/builtin/ar.py", "dlmbench/builtin/ar_sampler.py",
    "dlmbench/metrics/oracle.py", "dlmbench/metrics/text.py", "dlmbench/metrics/proxy.py",
    "dlmbench/metrics/genppl.py", "dlmbench/metrics/mauve.py",
    "dlmbench_elf/path.py", "dlmbench_elf/model.py", "dlmbench_elf/samplers.py", "dlmbench_elf/layout.py",
    "dlmbench_mdlm/model.py", "dlmbench_mdlm/samplers.py",
    "dlmbench_duo/model.py", "dlmbench_duo/samplers.py", "dlmbench_duo/duality.py",
]

# The tests that may kill them: each plugin's own suite and the core's unit tests of these
# modules. Whole-run tests (runner, smoke, CLI) reach every function and would make each
# mutant cost a run; the unit tests are where a wrong number must be seen.
TESTS = [
    "plugins/elf/tests", "plugins/mdlm/tests", "plugins/duo/tests",
    "tests/test_schedule.py", "tests/test_nfe_and_sampling.py", "tests/test_ar.py", "tests/test_prefix.py",
    "tests/test_text_metrics.py", "tests/test_genppl.py", "tests/test_reference_settings.py", "tests/test_mauve.py",
    "tests/test_proxy.py", "tests/test_bound.py",
    "tests/test_pcfg.py", "tests/test_metric_entries.py", "tests/test_rule_usage.py",
    "tests/test_synthetic_task.py", "tests/test_protocols.py",
    "tests/test_hub_needs.py", "tests/test_model_tokenizers.py", "tests/test_released_weights.py",
]
# Whole training runs (15-30 s each) and the conformance kit (it trains a model per test, to
# check the plugin API, not its numbers): they reach nearly every function of a model, so
# every mutant they do not kill would cost their full time. A wrong number must be seen by
# a unit test; these stay in the suite but out of the mutation run.
HEAVY = [
    "plugins/elf/tests/test_elf_conformance.py", "plugins/mdlm/tests/test_mdlm_conformance.py",
    "plugins/duo/tests/test_duo_conformance.py",
    "plugins/elf/tests/test_elf_training.py::test_loss_falls_under_fit",
    "plugins/mdlm/tests/test_mdlm_training.py::test_loss_falls_and_sampling_nfe_matches",
    "plugins/duo/tests/test_duo_training.py::test_loss_falls_and_sampling_nfe_matches",
    "tests/test_synthetic_task.py::test_data_scores_near_the_entropy_rate_on_every_quality_metric",
    "tests/test_model_tokenizers.py::test_token_budgets_keep_their_hashes",  # reads leaderboard/records, not staged
]
# Imported once in mutmut's fork server instead of once per mutant (ELF's encoder and the
# metrics import transformers lazily: seconds per forked worker otherwise).
PRELOAD = ["transformers.models.t5.modeling_t5", "transformers.models.gpt2.modeling_gpt2", "tokenizers"]
TEST_SUPPORT = ["tests/conftest.py", "tests/toyplugin.py", "tests/test_bad_input.py", "tests/fixtures", "configs"]

KILLED = {"killed", "timeout", "caught by type check", "segfault"}  # a planted bug some test noticed
# Exit 255 is mutmut's worker dying outside the tests (its fork server gone, e.g. under
# memory pressure): mutmut files it under timeouts, but it says nothing of the mutant.
HARNESS_ERROR = 255


def source_of(module: str) -> Path:
    """The repository file of a staged module path (``dlmbench_elf/path.py``)."""
    package, *rest = Path(module).parts
    return PACKAGES[package].joinpath(*rest) if package in PACKAGES and rest else ROOT / "missing"


def sync_tree(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` (files keep their mtimes, so mutmut re-mutates
    only what changed); ``__pycache__`` and files gone from ``src`` are dropped."""
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists() or dst.stat().st_mtime != src.stat().st_mtime or dst.read_bytes() != src.read_bytes():
            shutil.copy2(src, dst)
        return
    wanted = {p.relative_to(src) for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    for rel in sorted(wanted):
        sync_tree(src / rel, dst / rel)
    if dst.exists():
        for p in [p for p in dst.rglob("*") if p.is_file()]:
            if p.relative_to(dst) not in wanted:
                p.unlink()


def stage(work: Path, modules: list[str], tests: list[str]) -> None:
    """Lay out ``work`` as mutmut expects: packages under their import names at the root,
    the tests at their repository paths (their fixtures resolve from there), and a
    pyproject.toml holding pytest's options and mutmut's."""
    # mutmut re-collects which tests reach which function only for new tests: a module
    # added to ``only_mutate`` since its stats were taken would have all its mutants
    # "no tests". A module not staged before therefore forces a full collection.
    staged = work / "mutants" / "staged-modules.json"
    before = set(json.loads(staged.read_text())) if staged.exists() else set()
    if not set(modules) <= before:
        (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(json.dumps(sorted(before | set(modules))))
    for name, src in PACKAGES.items():
        sync_tree(src, work / name)
    for rel in [*tests, *TEST_SUPPORT]:
        sync_tree(ROOT / rel, work / rel)
        stale = work / "mutants" / rel  # mutmut copies tests over its old copy, never deleting
        if stale.is_dir():
            shutil.rmtree(stale)
    (work / "conftest.py").write_text(
        '"""Staged by benchmarks/mutation.py: preloads for mutmut\'s fork server."""\n'
        + "".join(f"import {m}  # noqa: F401\n" for m in PRELOAD))
    selection = [*tests, *(f"--deselect={t}" for t in HEAVY)]
    toml = lambda items: "[" + ", ".join(json.dumps(i) for i in items) + "]"  # noqa: E731
    (work / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\n"
        'markers = ["slow: opt-in", "gpu: opt-in"]\n'
        'addopts = "-p no:cacheprovider --import-mode=importlib"\n\n'
        "[tool.mutmut]\n"
        f"source_paths = {toml(PACKAGES)}\n"
        f"only_mutate = {toml(modules)}\n"
        f"pytest_add_cli_args_test_selection = {toml(selection)}\n"
        f"also_copy = {toml(['conftest.py', *sorted({Path(t).parts[0] for t in [*tests, *TEST_SUPPORT]} - {'tests'})])}\n"
        'process_isolation = "forkserver"  # torch is not fork-safe after pytest has run\n'
        "use_git_change_detection = false\n"
    )


def equivalent_reasons() -> list[dict]:
    return json.loads(EQUIVALENT.read_text())["mutants"] if EQUIVALENT.exists() else []


def changed_lines(diff: str) -> list[str]:
    """The -/+ lines of a mutant's diff, stripped: its identity across reruns (mutmut's
    numbering shifts whenever a function gains a line)."""
    return [line[0] + line[1:].strip() for line in diff.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def collect(work: Path, modules: list[str]) -> dict:
    """Per-module counts and the survivors with their diffs, read from mutmut's state."""
    old = os.getcwd()
    os.chdir(work)  # mutmut reads its configuration and state relative to the cwd
    try:
        from mutmut.mutation.data import SourceFileMutationData
        from mutmut.mutation.diff_apply import get_diff_for_mutant
        from mutmut.stats import status_by_exit_code

        known = equivalent_reasons()
        report = {}
        for module in modules:
            data = SourceFileMutationData(path=Path(module))
            data.load()
            statuses: dict[str, int] = {}
            survivors, equivalent = [], []
            for name, code in sorted(data.exit_code_by_key.items()):
                status = "not checked" if code == HARNESS_ERROR else status_by_exit_code[code]
                statuses[status] = statuses.get(status, 0) + 1
                if status in KILLED or status == "not checked":
                    continue
                try:
                    lines = changed_lines(get_diff_for_mutant(name, path=Path(module)))
                except Exception as exc:  # noqa: BLE001 - mutmut cannot always rebuild a diff (e.g. a nested def)
                    lines = [f"?diff unavailable: {exc}"]
                entry = {"mutant": name, "status": status, "diff": lines}
                reason = next((k["reason"] for k in known if k["module"] == module and k["diff"] == lines), None)
                (equivalent if reason else survivors).append({**entry, "reason": reason} if reason else entry)
            total = sum(statuses.values())
            killed = sum(n for s, n in statuses.items() if s in KILLED)
            checked = total - statuses.get("not checked", 0) - len(equivalent)
            report[module] = {
                "mutants": total, "killed": killed, "statuses": statuses, "equivalent": len(equivalent),
                "complete": "not checked" not in statuses,  # False: the kill rate is over the mutants tested so far
                "kill_rate": round(killed / checked, 4) if checked else None,
                "survivors": survivors, "equivalent_mutants": equivalent,
            }
        return report
    finally:
        os.chdir(old)


def retest(work: Path, modules: list[str], survivors: bool) -> list[str]:
    """Mutants to test again by name: those a harness error left unjudged, and with
    ``survivors`` the last run's survivors (mutmut itself re-tests only the mutants of
    functions whose source changed). Named, mutmut runs only the named: the untested too."""
    if not (work / "mutants").is_dir():
        return []
    old = os.getcwd()
    os.chdir(work)
    try:
        from mutmut.mutation.data import SourceFileMutationData
        from mutmut.stats import status_by_exit_code

        names, unrun = [], []
        for module in modules:
            data = SourceFileMutationData(path=Path(module))
            data.load()
            names += [n for n, code in data.exit_code_by_key.items() if code == HARNESS_ERROR or (
                survivors and code is not None and status_by_exit_code[code] in ("survived", "no tests"))]
            unrun += [n for n, code in data.exit_code_by_key.items() if code is None]
        return names + unrun if names else []
    finally:
        os.chdir(old)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", default=",".join(MODULES),
                        help="comma-separated staged module paths (default: every module in scope)")
    parser.add_argument("--tests", default=",".join(TESTS), help="comma-separated test paths mutmut selects from")
    parser.add_argument("--work", default="build/mutation",
                        help="staging directory, kept between runs; relative to the repository root "
                             "(default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=max(1, len(os.sched_getaffinity(0))),
                        help="mutants tested at once (default: the cores available)")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results (delete the staging directory)")
    parser.add_argument("--retest-survivors", action="store_true",
                        help="test the last run's survivors again (after new tests; mutmut itself only re-tests "
                             "mutants of functions whose source changed)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the JSON from the last run's state")
    parser.add_argument("--json", default=str(C.RESULTS / f"{SCRIPT}.json"), help="where the JSON goes")
    args = parser.parse_args(argv)
    modules = [m for m in args.modules.split(",") if m]
    unknown = [m for m in modules if not source_of(m).is_file()]
    if unknown:
        sys.exit(f"--modules: {', '.join(unknown)} not found; give paths like dlmbench_mdlm/samplers.py "
                 f"(packages: {', '.join(PACKAGES)})")
    if shutil.which("mutmut") is None and not args.report_only:
        sys.exit("mutmut is not installed: pip install -e '.[mutation]'")
    started = C.now()
    work = ROOT / args.work  # an absolute --work stays as given
    if args.fresh and work.exists():
        shutil.rmtree(work)
    if not args.report_only:  # a report only reads: staging would pull the tests out from under a running mutmut
        stage(work, modules, [t for t in args.tests.split(",") if t])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per mutant worker: --jobs of them share the cores
        names = retest(work, modules, args.retest_survivors)
        # Named, mutmut tests only those; a second, plain run then tests the mutants it made
        # for functions that changed since (their names did not exist before the first run).
        for batch in ([names, []] if names else [[]]):
            done = subprocess.run(["mutmut", "run", "--max-children", str(args.jobs), *batch], cwd=work, env=env)
            if done.returncode != 0:  # e.g. a test that fails unmutated: mutmut says which above
                sys.exit(f"mutmut run failed (exit {done.returncode}) in {work}; no JSON written")
    report = collect(work, modules)
    import torch

    payload = C.envelope(SCRIPT, args, torch.device("cpu"), started)
    measured = {"date": started, "git_revision": payload["machine"]["git_revision"], "command": payload["command"]}
    modules_out = merged(Path(args.json), {m: {**r, "measured": measured} for m, r in report.items()})
    payload.update({"tool": f"mutmut {_version('mutmut')}", "target_kill_rate": TARGET, "modules": modules_out})
    C.write_json(args.json, payload)
    width = max(len(m) for m in report)
    print(f"{'module':<{width}}  mutants  killed  equiv  survived  untested  kill rate")
    for module, r in report.items():
        rate = "-" if r["kill_rate"] is None else f"{r['kill_rate']:.1%}"
        print(f"{module:<{width}}  {r['mutants']:7d}  {r['killed']:6d}  {r['equivalent']:5d}  "
              f"{len(r['survivors']):8d}  {r['statuses'].get('not checked', 0):8d}  {rate:>9}")


def merged(path: Path, report: dict) -> dict:
    """``report`` over the modules of the JSON already at ``path``: a run of some modules
    keeps the others' last measurement, each stamped with the run that made it (its date,
    revision and command), in the order of :data:`MODULES`."""
    previous = json.loads(path.read_text()) if path.exists() else {}
    stamp = {k: previous.get(k) for k in ("date", "command")} | \
        {"git_revision": previous.get("machine", {}).get("git_revision")}
    out = {m: {**r, "measured": r.get("measured", stamp)} for m, r in previous.get("modules", {}).items()}
    out.update(report)
    order = {m: i for i, m in enumerate(MODULES)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
