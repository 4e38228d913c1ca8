"""``benchmarks/gpu_check.py --dry``: the GPU check's CPU run, so the prepared script a
lent GPU runs once cannot rot between loans. Every CPU-runnable section must succeed and
the GPU-only parts must say why they were skipped."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ["gpu_tests", "attention", "fast_path", "utilization", "torchrun"]
MACHINE_KEYS = {"device", "cpu_model", "torch_threads", "cpu_cores_available", "versions", "git_revision"}

pytestmark = pytest.mark.usefixtures("one_thread")


def gpu_marked_files() -> list[str]:
    """The test files under the script's own test directories that mark a test ``gpu``:
    ``--dry`` collects only these (collecting the whole suite took most of its 17 s; that
    the default collects every directory is checked on its own below)."""
    gc = load()
    marked = re.compile(r"\bpytest\.mark\.gpu\b")
    return sorted(str(p.relative_to(ROOT)) for d in gc.test_dirs() for p in (ROOT / d).rglob("test_*.py")
                  if marked.search(p.read_text()))


def load():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> dict:
    """One ``--dry`` run from another directory, through the script's ``main`` in this
    process (its sections start their own pytest and torchrun processes); the thread count
    it sets is put back after."""
    import torch

    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "gpu_check.json"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        try:
            data = load().main(["--dry", "--json", str(out), "--test-paths", ",".join(gpu_marked_files())])
        finally:
            torch.set_num_threads(threads)
        assert Path.cwd() == tmp  # the script returned to where it was started
    assert data["ok"], json.dumps(data["sections"])[-3000:]
    assert not (tmp / ".dlmbench-cache").exists()  # builds happen in the script's temporary directory
    assert json.loads(out.read_text()) == json.loads(json.dumps(data))
    return json.loads(out.read_text())


def test_dry_run_records_the_machine_and_every_section(dry):
    assert dry["benchmark"] == "gpu_check" and dry["mode"] == "dry" and dry["ok"] is True
    assert MACHINE_KEYS <= set(dry["machine"])
    for key in ("date", "finished", "command", "device_name", "torch_version", "cuda_version", "gpu_count",
                "xformers_version", "budget_s", "plan", "total_seconds"):
        assert key in dry, key
    assert dry["device_name"].startswith("cpu") and dry["gpu_count"] == 0
    assert list(dry["sections"]) == SECTIONS
    for name, entry in dry["sections"].items():
        assert entry["status"] == "ok", (name, entry.get("error"), entry)
        assert entry["seconds"] > 0 and "error" not in entry
    assert 0 < dry["total_seconds"] < dry["budget_s"]


def test_gpu_only_parts_are_skipped_with_the_reason(dry):
    assert dry["skipped_parts"] == {"attention.xformers": "dry run on CPU", "torchrun.nccl": "dry run on CPU"}
    sections = dry["sections"]
    assert sections["attention"]["result"]["xformers"] == {"status": "skipped", "reason": "dry run on CPU"}
    assert sections["torchrun"]["result"]["nccl"] == {"status": "skipped", "reason": "dry run on CPU"}


def test_gpu_tests_section_ran_the_marked_tests(dry):
    r = dry["sections"]["gpu_tests"]["result"]
    assert "--run-gpu -m gpu" in r["run"]["command"] and r["run"]["returncode"] == 0
    assert r["run"]["command"].endswith(" ".join(gpu_marked_files())) and dry["plan"]["test_paths"]
    assert r["tests"] >= 6 and r["failures"] == r["errors"] == 0 and len(r["cases"]) == r["tests"]
    names = {c["test"] for c in r["cases"]}
    assert any("test_xformers_matches_sdpa_on_cuda" in n for n in names)  # plugins/*/tests are included
    # --run-gpu reached pytest: on the CPU they skip for want of CUDA, not for want of the flag
    assert all(c["outcome"] == "skipped" and "CUDA is not available" in c["message"] for c in r["cases"])


def test_attention_section_compares_against_float64(dry):
    r = dry["sections"]["attention"]["result"]
    assert r["prefix_tokens"] == 12 and r["shape_bhld"][2] == r["seq_len"] + 12
    assert 0 < r["fp32"]["sdpa_vs_fp64_max_abs"] < 1e-5
    assert 1e-5 < r["bf16"]["sdpa_vs_fp64_max_abs"] < 5e-2  # bf16 really ran in bf16
    assert r["fp32"]["sdpa_s"] > 0 and r["bf16"]["sdpa_s"] > 0


def test_fast_path_section_trains_and_samples_every_variant(dry):
    runs = dry["sections"]["fast_path"]["result"]["runs"]
    assert set(runs) == {f"{m}/{v}" for m in ("elf", "mdlm") for v in ("fp32", "bf16", "compile")}
    for key, row in runs.items():
        assert row["ok"] and row["finite_losses"] and row["finite_weights"], key
        assert len(row["train"]["losses"]) == row["train"]["steps"] >= 2
        assert row["sample"]["nfe"] > 0 and row["sample"]["ids_in_vocab"] and row["sample"]["same_ids_twice"]
    for model in ("elf", "mdlm"):
        assert runs[f"{model}/bf16"]["precision"] == "bf16" and not runs[f"{model}/bf16"]["compile"]
        comp = runs[f"{model}/compile"]
        assert comp["compile"] and comp["compiled_children"] and comp["nfe_matches_eager"]
        assert comp["train"]["compile_s"] is not None


def test_utilization_section_uses_the_flop_counter_and_a_bf16_peak(dry):
    r = dry["sections"]["utilization"]["result"]
    assert r["peak"]["bf16_flop_per_s"] > 0 and r["peak"]["fp32"]["flop_per_s"] > 0 and not r["errors"]
    assert set(r["results"]) == {"elf-tiny", "mdlm-tiny"}
    for m in r["results"].values():
        assert m["forward_flops"] > 0 and m["sample_flops"] > 0 and m["network_params"] > 0
        assert 0 < m["forward_fraction_of_bf16_peak"] and 0 < m["sample_fraction_of_bf16_peak"]


def test_torchrun_section_trains_and_evaluates_through_the_cli(dry):
    r = dry["sections"]["torchrun"]["result"]
    assert r["processes"] == 1 and "torch.distributed.run" in r["run"]["command"]
    assert "-m dlmbench run" in r["run"]["command"] and r["run"]["returncode"] == 0
    (cell,) = r["cells"]
    assert cell["status"] == "ok" and cell["nfe"] > 0
    (model,) = r["models"]
    assert model["train_tokens"] == 8 * 16 * 5


def test_gpu_tests_collects_every_test_directory_by_default(tmp_path, monkeypatch):
    """Without ``--test-paths`` (as a lent GPU runs it) pytest is given ``tests`` and every
    ``plugins/*/tests``; the command is captured instead of run."""
    gc = load()
    plan = gc.Plan.make(True)
    assert plan.test_paths is None
    seen = []

    def fake_run(cmd, cwd, timeout, env=None):
        seen.append(cmd)
        return {"command": " ".join(cmd), "returncode": 0, "timed_out": False}

    monkeypatch.setattr(gc, "run_cmd", fake_run)
    gc.section_gpu_tests(plan, None, tmp_path, 60, {})
    plugin_dirs = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("plugins/*/tests"))
    assert plugin_dirs and seen[0][-1 - len(plugin_dirs):] == ["tests", *plugin_dirs]
    narrowed = dataclasses.replace(plan, test_paths=("tests/test_fastpath.py",))
    gc.section_gpu_tests(narrowed, None, tmp_path, 60, {})
    assert seen[1][-1] == "tests/test_fastpath.py" and "plugins/elf/tests" not in seen[1]


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    gc = load()

    def broken(*_args):
        raise RuntimeError("deliberately broken")

    monkeypatch.setitem(gc.RUNNERS, "attention", broken)
    out = tmp_path / "partial.json"
    data = gc.main(["--dry", "--sections", "attention,utilization", "--json", str(out)])
    assert json.loads(out.read_text())["sections"] == data["sections"]
    s = data["sections"]
    assert s["attention"]["status"] == "failed" and "deliberately broken" in s["attention"]["error"]
    assert s["utilization"]["status"] == "ok"
    assert s["gpu_tests"] == {"status": "skipped", "reason": "not in --sections"}
    assert data["ok"] is False


def test_the_time_guard_skips_sections_with_its_reason_and_the_command_exits_1(tmp_path):
    """As a lent GPU runs it (``python benchmarks/gpu_check.py``, a subprocess: the
    script's own entry and exit status; the dry run above goes through ``main``)."""
    out = tmp_path / "late.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--sections", "attention,utilization",
                             "--budget-s", "0", "--json", str(out)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    for name in ("attention", "utilization"):
        assert data["sections"][name]["status"] == "skipped"
        assert data["sections"][name]["reason"].startswith("time guard:")
    assert data["ok"] is False
