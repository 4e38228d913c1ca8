"""benchmarks/mutation.py writes one JSON for every module in scope, though a run may
measure only some: the others must keep their last measurement, stamped with the run
that made it, never be dropped or relabelled as new."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mutation_script():
    spec = importlib.util.spec_from_file_location("bench_mutation", ROOT / "benchmarks" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_partial_run_keeps_the_other_modules_with_their_own_stamp(tmp_path):
    m = mutation_script()
    first, second, third = m.MODULES[0], m.MODULES[1], m.MODULES[2]
    path = tmp_path / "mutation.json"
    path.write_text(json.dumps({
        "date": "2026-01-01T00:00:00+00:00", "command": "python benchmarks/mutation.py",
        "machine": {"git_revision": "aaaa"},
        "modules": {third: {"kill_rate": 0.5}, first: {"kill_rate": 0.7}},
    }))
    now = {"date": "2026-02-02T00:00:00+00:00", "git_revision": "bbbb", "command": "new"}
    out = m.merged(path, {second: {"kill_rate": 0.9, "measured": now},
                          first: {"kill_rate": 0.8, "measured": now}})
    assert list(out) == [first, second, third]  # the order of MODULES, not of the runs
    assert out[first] == {"kill_rate": 0.8, "measured": now}  # re-measured: replaced
    assert out[second]["measured"] == now
    assert out[third] == {"kill_rate": 0.5, "measured": {  # not re-measured: kept, with the old run's stamp
        "date": "2026-01-01T00:00:00+00:00", "command": "python benchmarks/mutation.py", "git_revision": "aaaa"}}


def test_a_stamped_module_keeps_its_own_stamp_and_a_first_run_starts_empty(tmp_path):
    m = mutation_script()
    first, second = m.MODULES[0], m.MODULES[1]
    old = {"date": "2026-01-01T00:00:00+00:00", "git_revision": "cccc", "command": "older"}
    path = tmp_path / "mutation.json"
    path.write_text(json.dumps({"date": "2026-01-05T00:00:00+00:00", "command": "x", "machine": {"git_revision": "dddd"},
                                "modules": {first: {"kill_rate": 0.6, "measured": old}}}))
    out = m.merged(path, {second: {"kill_rate": 1.0}})
    assert out[first]["measured"] == old  # measured by an earlier run than the file's last
    assert m.merged(tmp_path / "absent.json", {second: {"kill_rate": 1.0}}) == {second: {"kill_rate": 1.0}}


def test_a_report_only_reads_the_staging_directory_and_changes_nothing(tmp_path, monkeypatch):
    """A report taken while mutmut runs must not re-stage: staging deletes mutmut's copies
    of the test folders, and every later mutant then fails for want of its tests."""
    m = mutation_script()
    copy = tmp_path / "mutants" / "plugins" / "elf" / "tests" / "test_x.py"
    copy.parent.mkdir(parents=True)
    copy.write_text("def test_x(): pass\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    module = m.MODULES[0]
    monkeypatch.setattr(m, "_version", lambda dist: "stand-in")  # mutmut is not a test dependency
    monkeypatch.setattr(m, "collect", lambda work, modules: {module: {
        "mutants": 0, "killed": 0, "equivalent": 0, "survivors": [], "statuses": {}, "kill_rate": None}})
    m.main(["--report-only", "--work", str(tmp_path), "--modules", module, "--json", str(tmp_path / "out.json")])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [*before, Path("out.json")]
    assert copy.read_text() == "def test_x(): pass\n"


def test_a_module_not_staged_before_forces_mutmut_to_collect_its_stats_again(tmp_path, monkeypatch):
    """mutmut re-collects test coverage only for new tests: a module added since the last
    stats would have every mutant filed "no tests". Its first staging drops the stats; a
    restaging of the same modules (or fewer) keeps them, so a rerun stays incremental."""
    m = mutation_script()
    monkeypatch.setattr(m, "sync_tree", lambda src, dst: None)
    stats = tmp_path / "mutants" / "mutmut-stats.json"
    a, b = m.MODULES[:2]

    def staged_with(modules):
        stats.parent.mkdir(parents=True, exist_ok=True)
        stats.write_text("{}")
        m.stage(tmp_path, modules, [])
        return stats.exists()

    assert not staged_with([a])
    assert staged_with([a])
    assert not staged_with([a, b])
    assert staged_with([b])
    assert staged_with([a, b])
