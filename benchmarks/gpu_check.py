"""One prepared check of every CUDA path of dlmbench, in under 8 minutes, written to one JSON.

The command a GPU user (or a session lent a device) runs, from the repository root, with
the package and the three plugins installed (``pip install xformers`` first if the
xformers path is to be checked too):

    python benchmarks/gpu_check.py --json benchmarks/results/gpu_check.json

then commit ``benchmarks/results/gpu_check.json`` with the device named in the commit
message (the JSON names it too: ``device_name``, ``machine.gpu``). ``--sections`` reruns
a subset (e.g. ``--sections attention,utilization``); ``--dry`` runs every section on the
CPU at tiny shapes (what ``tests/test_gpu_check.py`` runs, so the script cannot rot).

Sections, each independent (one that fails is recorded with its error, the others run):

1. ``gpu_tests``: ``python -m pytest --run-gpu -m gpu -q`` on ``tests/`` and
   ``plugins/*/tests`` (``--test-paths`` narrows it); counts and per-test outcomes from its JUnit XML.
2. ``attention``: :func:`dlmbench.nn.attention.attention` with xformers against SDPA on
   ELF-B shapes (batch 8, 12 heads of 64, L = 1024 plus ELF's 12 prefix tokens), bf16
   and fp32: max abs differences (also against a float64 reference) and median times.
3. ``fast_path``: ELF tiny and MDLM tiny, a short :func:`dlmbench.training.fit` and two
   2-step :func:`dlmbench.sampling.generate` calls in fp32, under ``precision="bf16"``
   and after :func:`dlmbench.training.compile_network` (what ``--precision bf16`` and
   ``--compile`` do in the runner): success, finiteness, NFE, times.
4. ``utilization``: ELF-B and MDLM small (DiT-small) at L = 1024 with their real
   vocabularies (T5 32,100; GPT-2 50,258), one network forward at batch 8 and one 2-step
   sample under bf16 autocast, FLOPs from :mod:`dlmbench.flops` (``utilization.measure``),
   against the bf16 matmul peak measured in the same run (fp32 peak recorded beside it).
5. ``torchrun``: ``python -m torch.distributed.run --standalone -m dlmbench run`` on MDLM
   tiny for a few steps: 2 processes (NCCL) when 2+ GPUs, else 1 process.

A global time guard (``--budget-s``, default 420 s) gives each section a share of what is
left, keeps a minimum for the sections after it, and skips a section (with the reason) when
too little is left; an in-process section past its share is interrupted (SIGALRM), a
subprocess is killed with its process group. The JSON is rewritten after every section.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

T0 = time.perf_counter()  # the budget counts the imports too

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SCRIPT = "gpu_check"
ROOT = C.HERE.parent
SECTIONS = ("gpu_tests", "attention", "fast_path", "utilization", "torchrun")
DRY = "dry run on CPU"
# seconds: the most a section may take on a GPU, and the least worth starting it with
CAP_S = {"gpu_tests": 180, "attention": 60, "fast_path": 180, "utilization": 100, "torchrun": 120}
MIN_S = {"gpu_tests": 40, "attention": 10, "fast_path": 30, "utilization": 20, "torchrun": 25}


@dataclass(frozen=True)
class Plan:
    """Shapes and repetitions: the GPU check's, or ``--dry``'s tiny CPU ones."""

    dry: bool
    att_batch: int = 8
    att_heads: int = 12
    att_head_dim: int = 64
    att_len: int = 1024
    reps: int = 10
    fast_seq_len: int = 32
    fast_batch: int = 16
    fast_train_steps: int = 3
    fast_samples: int = 8
    compile_backend: str = "inductor"
    util_presets: tuple[tuple[str, str], ...] = (("elf", "B"), ("mdlm", "small"))
    util_len: int = 1024
    util_batch: int = 8
    util_vocab: dict | None = None  # None: each model's real vocabulary
    peak_n: int = 8192
    util_reps: int = 5
    util_min_seconds: float = 0.3
    run_seq_len: int = 32
    test_paths: tuple[str, ...] | None = None  # gpu_tests collects these; None: test_dirs()

    @classmethod
    def make(cls, dry: bool) -> "Plan":
        if not dry:
            return cls(dry=False)
        return cls(dry=True, att_batch=2, att_heads=2, att_head_dim=16, att_len=32, reps=3, fast_seq_len=16,
                   fast_batch=4, fast_train_steps=2, fast_samples=2, compile_backend="eager",
                   util_presets=(("elf", "tiny"), ("mdlm", "tiny")), util_len=16, util_batch=2,
                   util_vocab={"elf": 64, "mdlm": 64}, peak_n=256, util_reps=2, util_min_seconds=0.0,
                   run_seq_len=16)


def short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:800]


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


# -- time guard ------------------------------------------------------------------------------
class SectionTimeout(Exception):
    """An in-process section ran past its share of the budget."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`SectionTimeout` in the main thread after ``seconds`` (SIGALRM)."""

    def handler(_signum, _frame):
        raise SectionTimeout(f"ran past its {seconds:.0f} s share of the time budget")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_cmd(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` in its own process group; on timeout (or interruption) kill the group."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return {"command": " ".join(cmd), "returncode": proc.returncode, "timed_out": timed_out,
            "timeout_s": round(timeout, 1), "wall_s": time.perf_counter() - start, "output_tail": out[-3000:]}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# -- 1. the project's own GPU tests ------------------------------------------------------------
def test_dirs() -> list[str]:
    return ["tests", *(str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("plugins/*/tests")))]


def junit_counts(path: Path) -> dict[str, Any]:
    """Totals and per-test outcomes from pytest's JUnit XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    cases = []
    for case in root.iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome, message = {"failure": "failed"}.get(tag, tag), (node.get("message") or "")[:300]
                break
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time", 0)), "message": message})
    totals["passed"] = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    return {**totals, "cases": cases}


def section_gpu_tests(plan: Plan, device, work: Path, allowed: float, out: dict[str, Any]) -> bool:
    xml = work / "gpu_tests.xml"
    paths = plan.test_paths or test_dirs()
    cmd = [sys.executable, "-m", "pytest", "--run-gpu", "-m", "gpu", "-q", f"--junitxml={xml}", *paths]
    run = out["run"] = run_cmd(cmd, ROOT, allowed - 5, child_env())
    if xml.exists():
        out.update(junit_counts(xml))
    ok = (run["returncode"] == 0 and not run["timed_out"] and out.get("tests", 0) > 0
          and out.get("failures", 1) == 0 and out.get("errors", 1) == 0)
    if not plan.dry and out.get("tests") and out.get("skipped") == out.get("tests"):
        out["note"] = "every gpu test skipped on the GPU machine"  # CUDA was not seen: not a pass
        ok = False
    return ok


# -- 2. xformers against SDPA -------------------------------------------------------------------
def elf_prefix_tokens() -> int:
    try:
        from dlmbench_elf.config import ELFConfig
    except ImportError:
        return 0
    cfg = ELFConfig.from_preset("B")
    return cfg.num_time_tokens + cfg.num_scale_tokens + cfg.num_mode_tokens


def median_time(fn: Callable[[], Any], device, reps: int) -> float:
    fn()  # warm-up (kernel selection, lazy init)
    return C.median([C.timed(fn, device) for _ in range(reps)])


def section_attention(plan: Plan, device, work: Path, allowed: float, out: dict[str, Any]) -> bool:
    import torch

    from dlmbench.nn.attention import attention

    prefix = elf_prefix_tokens()
    length = plan.att_len + prefix
    shape = (plan.att_batch, plan.att_heads, length, plan.att_head_dim)
    gen = torch.Generator(device="cpu").manual_seed(0)
    q64, k64, v64 = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    out.update(shape_bhld=list(shape), seq_len=plan.att_len, prefix_tokens=prefix)
    sync = "CUDA-synchronised" if device.type == "cuda" else "on the CPU"
    out["timing"] = f"median of {plan.reps} calls after one warm-up, each {sync}"
    if plan.dry:
        out["xformers"] = skipped(DRY)
    elif importlib.util.find_spec("xformers") is None:
        out["xformers"] = skipped("xformers is not installed (pip install xformers)")
    else:
        import xformers

        out["xformers"] = {"status": "ok", "version": getattr(xformers, "__version__", None)}
    use_xf = out["xformers"]["status"] == "ok"
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        q, k, v = (t.to(device=device, dtype=dtype) for t in (q64, k64, v64))
        # float64 reference on the same (rounded) inputs
        qd, kd, vd = (t.double() for t in (q, k, v))
        ref = torch.softmax(qd @ kd.transpose(-1, -2) / math.sqrt(plan.att_head_dim), -1) @ vd
        row: dict[str, Any] = {}
        with torch.no_grad():
            sdpa = attention(q, k, v, backend="sdpa")
            row["sdpa_s"] = median_time(lambda: attention(q, k, v, backend="sdpa"), device, plan.reps)
            row["sdpa_vs_fp64_max_abs"] = float((sdpa.double() - ref).abs().max())
            if use_xf:
                try:
                    xf = attention(q, k, v, backend="xformers")
                    row["xformers_s"] = median_time(lambda: attention(q, k, v, backend="xformers"), device, plan.reps)
                    row["xformers_vs_sdpa_max_abs"] = float((xf.double() - sdpa.double()).abs().max())
                    row["xformers_vs_fp64_max_abs"] = float((xf.double() - ref).abs().max())
                    row["xformers_speedup"] = row["sdpa_s"] / row["xformers_s"]
                except Exception as exc:  # noqa: BLE001 - an xformers build that imports but does not run
                    row["xformers_error"] = short(exc)
        out[name] = row
        del q, k, v, qd, kd, vd, ref
    xf_errors = [out[n].get("xformers_error") for n in ("bf16", "fp32") if out[n].get("xformers_error")]
    return all(math.isfinite(out[n]["sdpa_vs_fp64_max_abs"]) for n in ("bf16", "fp32")) and not xf_errors


# -- 3. bf16 and compile -----------------------------------------------------------------------
def fast_path_run(plan: Plan, name: str, variant: str, device, registry, data) -> dict[str, Any]:
    """A fresh tiny model: ``fit`` then two ``generate`` calls under ``variant``."""
    import torch

    from dlmbench.sampling import generate
    from dlmbench.training import compile_network, fit

    options = {"encoder_pretrain_steps": 2} if name == "elf" else {}  # a check, not a model: skip most pretraining
    problems: dict[str, str] = {}
    built = C.build_all([{"name": name, "options": options}], device, registry=registry, skipped=problems,
                        data=data, seq_len=plan.fast_seq_len,
                        task_options={"train_sentences": 256, "valid_sentences": 16})
    if not built:
        raise RuntimeError(f"{name} does not build: {problems}")
    b = built[0]
    model, sampler = b.model, b.sampler
    precision = "bf16" if variant == "bf16" else "fp32"
    row: dict[str, Any] = {"model": b.label, "precision": precision, "compile": variant == "compile",
                           "options": options}
    if variant == "compile":
        row["compile_backend"] = plan.compile_backend
        row["compiled_children"] = compile_network(model, backend=plan.compile_backend)
    torch.manual_seed(0)
    report = fit(model, b.data.train, batch_size=plan.fast_batch, steps=plan.fast_train_steps, seed=0,
                 precision=precision)
    row["train"] = {"steps": report.steps, "losses": report.losses, "seconds": report.seconds,
                    "first_step_s": report.first_step_seconds, "median_step_s": report.median_step_seconds,
                    "compile_s": report.compile_seconds if variant == "compile" else None}
    finite_loss = all(math.isfinite(v) for v in report.losses)
    finite_weights = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    runs = [generate(model, sampler, 2, plan.fast_samples, seed=0, batch_size=plan.fast_samples,
                     precision=precision) for _ in range(2)]
    vocab = b.data.spec.vocab_size
    row["sample"] = {"steps": 2, "num_samples": plan.fast_samples, "nfe": runs[0].nfe, "calls": runs[0].calls,
                     "first_s": runs[0].seconds, "second_s": runs[1].seconds,
                     "ids_shape": list(runs[0].ids.shape),
                     "ids_in_vocab": bool(((runs[0].ids >= 0) & (runs[0].ids < vocab)).all()),
                     "same_ids_twice": bool(torch.equal(runs[0].ids, runs[1].ids))}
    row["finite_losses"], row["finite_weights"] = finite_loss, finite_weights
    row["ok"] = finite_loss and finite_weights and row["sample"]["ids_in_vocab"] and row["sample"]["same_ids_twice"]
    return row


def section_fast_path(plan: Plan, device, work: Path, allowed: float, out: dict[str, Any]) -> bool:
    import torch

    registry = C.load_registry(["elf", "mdlm"])
    out["runs"] = {}
    try:
        fast_path_variants(plan, device, registry, out["runs"])
    finally:
        with contextlib.suppress(Exception):
            torch._dynamo.reset()  # later sections start from a clean compiler state
    return all(r["ok"] for r in out["runs"].values())


def fast_path_variants(plan: Plan, device, registry, runs: dict[str, Any]) -> None:
    # eager runs first: compilation is the slow part, and the guard may cut it short
    for variant in ("fp32", "bf16", "compile"):
        for name in ("elf", "mdlm"):
            key = f"{name}/{variant}"
            start = time.perf_counter()
            try:
                row = fast_path_run(plan, name, variant, device, registry, None)
            except SectionTimeout:
                raise
            except Exception as exc:  # noqa: BLE001 - one failing variant is recorded, the rest still run
                row = {"ok": False, "error": short(exc)}
            row["wall_s"] = time.perf_counter() - start
            runs[key] = row
            if variant == "compile" and "sample" in row and "sample" in runs.get(f"{name}/fp32", {}):
                # compiling must not change what the NFE counter sees
                row["nfe_matches_eager"] = row["sample"]["nfe"] == runs[f"{name}/fp32"]["sample"]["nfe"]
                row["ok"] = row["ok"] and row["nfe_matches_eager"]
            print(f"  {key}: {'ok' if row['ok'] else 'FAILED ' + row.get('error', '')} ({row['wall_s']:.1f} s)")


# -- 4. utilisation against the bf16 matmul peak --------------------------------------------
def bf16_matmul_peak(device, n: int, reps: int, inner: int = 4) -> dict[str, Any]:
    """``utilization.matmul_peak`` in bfloat16: best of ``reps`` blocks of ``inner`` matmuls."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    best = min(C.timed(lambda: [a @ b for _ in range(inner)], device) for _ in range(reps)) / inner
    return {"n": n, "reps": reps, "inner": inner, "best_s": best, "flops": 2 * n**3, "flop_per_s": 2 * n**3 / best}


def paper_spec(name: str, seq_len: int, vocab: int | None):
    """The data layout each model's released weights read: T5 ids for ELF, GPT-2 ids
    (plus the appended ``[MASK]``) for MDLM; ``vocab`` shrinks it for the dry run."""
    from dlmbench.data import DataSpec

    if name == "elf":
        from dlmbench_elf.official import t5_spec

        return t5_spec(seq_len) if vocab is None else t5_spec(seq_len, vocab_size=vocab)
    from dlmbench.nn.dit_weights import gpt2_spec

    if vocab is None:
        return gpt2_spec(seq_len=seq_len)
    return DataSpec(vocab_size=vocab, seq_len=seq_len, pad_id=vocab - 1, bos_id=vocab - 2, eos_id=vocab - 2,
                    mask_id=vocab - 1)  # gpt2_spec's layout, last ids reserved


# ELF-B offline: a randomly initialised frozen T5 with T5-small's shapes (latents D = 512)
# instead of the pretrained T5-small; the encoder is outside the network being timed.
ELF_OFFLINE = {"encoder": "random", "encoder_name": None, "encoder_d_model": 512, "encoder_layers": 6,
               "encoder_heads": 8, "encoder_d_ff": 2048}


def section_utilization(plan: Plan, device, work: Path, allowed: float, out: dict[str, Any]) -> bool:
    import torch

    import utilization as U
    from dlmbench.build import build_model_config, build_sampler
    from dlmbench.config import ModelEntry
    from dlmbench.training import autocast

    registry = C.load_registry(["elf", "mdlm"])
    peak_n, reps = plan.peak_n, max(2, plan.util_reps)
    bf16_before = bf16_matmul_peak(device, peak_n, reps)
    fp32 = U.matmul_peak(device, peak_n, reps)
    out.update(precision="bf16 autocast (dlmbench.training.autocast)", attention_backend="sdpa",
               peak={"bf16_before": bf16_before, "fp32": fp32}, results={}, errors={})
    for name, preset in plan.util_presets:
        key = f"{name}-{preset}"
        try:
            options = {"attention_backend": "sdpa"}  # FlopCounterMode counts SDPA, not xformers' kernel
            if name == "elf" and preset != "tiny":
                options.update(ELF_OFFLINE)
            entry = ModelEntry(name=name, preset=preset, options=options)
            spec = paper_spec(name, plan.util_len, (plan.util_vocab or {}).get(name))
            torch.manual_seed(0)
            model = registry.model(name)(build_model_config(entry, "tiny", registry), spec).to(device)
            sampler = build_sampler(entry, registry)
            built = C.Built(name, f"{name}/{sampler.name}", model, sampler, None, None)
            with autocast(device, "bf16"):
                m = U.measure(built, plan.util_batch, 2, device, plan.util_min_seconds, plan.util_reps)
            m.pop("flops_by_op", None)
            m["network_params"] = sum(p.numel() for p in model.network.parameters())
            m.update(label=built.label, preset=preset, options=options, seq_len=plan.util_len,
                     batch_size=plan.util_batch, vocab_size=spec.vocab_size)
            out["results"][key] = m
            del model, built
        except SectionTimeout:
            raise
        except Exception as exc:  # noqa: BLE001
            out["errors"][key] = short(exc)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bf16_after = bf16_matmul_peak(device, peak_n, reps)
    peak = max(bf16_before["flop_per_s"], bf16_after["flop_per_s"])
    out["peak"].update(bf16_flop_per_s=peak, bf16_after=bf16_after,
                       tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32))
    for m in out["results"].values():
        m["forward_fraction_of_bf16_peak"] = m["forward_flop_per_s"] / peak
        m["sample_fraction_of_bf16_peak"] = m["sample_flop_per_s"] / peak
        print(f"  {m['label']} ({m['preset']}) L={m['seq_len']} B={m['batch_size']}: "
              f"{m['forward_flop_per_s'] / 1e12:.3g} TFLOP/s forward = {m['forward_fraction_of_bf16_peak']:.2f} "
              f"of the bf16 peak ({peak / 1e12:.3g} TFLOP/s)")
    return not out["errors"] and len(out["results"]) == len(plan.util_presets)


# -- 5. torchrun ------------------------------------------------------------------------------
def section_torchrun(plan: Plan, device, work: Path, allowed: float, out: dict[str, Any]) -> bool:
    import torch

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    procs = 2 if gpus >= 2 else 1
    out.update(gpus=gpus, processes=procs)
    if plan.dry:
        out["nccl"] = skipped(DRY)
    elif procs == 1:
        out["nccl"] = skipped(f"{gpus} CUDA device: ran 1 process")
    else:
        out["nccl"] = {"status": "ok", "backend": "nccl"}  # dlmbench.distributed.setup: NCCL on CUDA
    run_dir = work / "torchrun"
    L, batch, steps = plan.run_seq_len, 8, 5
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           "-m", "dlmbench", "run", "--models", "mdlm", "--steps", "2", "--seeds", "0", "--num-samples", "8",
           "--seq-len", str(L), "--batch-size", str(batch), "--train-tokens", str(batch * L * steps),
           "--out", str(run_dir / "out"), "--cache", str(run_dir / "cache"), "--device", device.type,
           "--no-progress", "--set", "budget.sample_batch_size=4", "--set", "task_options.train_sentences=2000"]
    run = out["run"] = run_cmd(cmd, work, allowed - 5, child_env())
    cells = [json.loads(p.read_text()) for p in sorted((run_dir / "out" / "cells").glob("mdlm-*.json"))]
    models = [json.loads(p.read_text()) for p in sorted((run_dir / "out" / "models").glob("mdlm-*.json"))]
    out["cells"] = [{k: c.get(k) for k in ("label", "status", "steps", "nfe", "num_samples", "wall_time_s", "error")}
                    for c in cells]
    out["models"] = [{k: r.get(k) for k in ("train_steps", "train_tokens", "train_seconds", "final_loss", "device")}
                     for r in models]
    if out["nccl"]["status"] == "ok" and run["returncode"] != 0:
        out["nccl"] = {"status": "failed", "backend": "nccl", "error": "the 2-process run failed (see run)"}
    return (run["returncode"] == 0 and len(cells) == 1 and cells[0].get("status") == "ok"
            and len(models) == 1 and models[0].get("train_tokens") == batch * L * steps)


# each fills its result dict as it goes (an interrupted section keeps what it measured)
# and returns whether everything it checked passed
RUNNERS: dict[str, Callable[..., bool]] = {
    "gpu_tests": section_gpu_tests, "attention": section_attention, "fast_path": section_fast_path,
    "utilization": section_utilization, "torchrun": section_torchrun,
}


# -- driver ---------------------------------------------------------------------------------------
def versions_of(device) -> dict[str, Any]:
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info: dict[str, Any] = {"torch_version": torch.__version__, "cuda_version": torch.version.cuda,
                            "cudnn_version": cudnn,
                            "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {C.cpu_model()}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["device_capability"] = f"{props.major}.{props.minor}"
    for mod in ("xformers", "triton"):
        if importlib.util.find_spec(mod) is not None:
            try:
                info[f"{mod}_version"] = __import__(mod).__version__
            except Exception as exc:  # noqa: BLE001
                info[f"{mod}_version"] = f"import failed: {short(exc)}"
        else:
            info[f"{mod}_version"] = None
    return info


def main(argv: list[str] | None = None, t0: float | None = None) -> dict[str, Any]:
    """Run the chosen sections; ``t0`` is when the budget started (default: now)."""
    t0 = time.perf_counter() if t0 is None else t0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(C.RESULTS / f"{SCRIPT}.json"), help="output (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N or auto (default: %(default)s); --dry: cpu")
    parser.add_argument("--dry", action="store_true", help="every section on CPU at tiny shapes (the test's mode)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="subset to run (default: all)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="whole-run time guard (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--test-paths", default=None,
                        help="gpu_tests: comma-separated test files/directories to collect instead of tests/ and "
                             "plugins/*/tests (default: all of them)")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {','.join(SECTIONS)}")
    if args.dry:
        args.device = "cpu"
    plan = Plan.make(args.dry)
    if args.test_paths:
        plan = dataclasses.replace(plan, test_paths=tuple(p.strip() for p in args.test_paths.split(",") if p.strip()))
    started = C.now()
    json_path = Path(args.json).resolve()
    here = os.getcwd()
    os.chdir(ROOT)  # git revision, test dirs
    try:
        return run_sections(args, chosen, plan, started, json_path, t0)
    finally:
        os.chdir(here)


def run_sections(args: argparse.Namespace, chosen: list[str], plan: Plan, started: str, json_path: Path,
                 t0: float) -> dict[str, Any]:
    device = C.setup_torch(args)
    if device.type != "cuda" and not args.dry:
        print("gpu_check: no CUDA device; use --dry for the CPU run", file=sys.stderr)
        sys.exit(2)
    payload: dict[str, Any] = {**C.envelope(SCRIPT, args, device, started), "mode": "dry" if args.dry else "gpu",
                               **versions_of(device), "plan": plan.__dict__, "budget_s": args.budget_s,
                               "sections": {}}
    deadline = t0 + args.budget_s
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        os.chdir(work)  # caches of the in-process builds land in the temporary directory
        for i, name in enumerate(SECTIONS):
            if name not in chosen:
                payload["sections"][name] = skipped("not in --sections")
                continue
            later = sum(MIN_S[s] for s in SECTIONS[i + 1:] if s in chosen)
            left = deadline - time.perf_counter()
            allowed = min(CAP_S[name], left - later)
            if allowed < MIN_S[name]:
                payload["sections"][name] = skipped(
                    f"time guard: {left:.0f} s of the {args.budget_s:.0f} s budget left, {later} s kept for the "
                    f"later sections, {MIN_S[name]} s needed")
                print(f"[{name}] skipped: {payload['sections'][name]['reason']}")
                continue
            print(f"[{name}] up to {allowed:.0f} s")
            start = time.perf_counter()
            result: dict[str, Any] = {}
            entry: dict[str, Any] = {"status": "failed", "result": result}
            try:
                with time_limit(allowed):
                    entry["status"] = "ok" if RUNNERS[name](plan, device, work, allowed, result) else "failed"
            except Exception as exc:  # noqa: BLE001 - a failing section is recorded; the others still run
                entry["error"] = short(exc)
            entry["seconds"] = time.perf_counter() - start
            payload["sections"][name] = entry
            why = f": {entry['error']}" if "error" in entry else ""
            print(f"[{name}] {entry['status']} in {entry['seconds']:.1f} s{why}")
            payload["total_seconds"] = time.perf_counter() - t0
            payload["finished"] = C.now()
            C.write_json(json_path, payload)
        os.chdir(ROOT)  # before the temporary directory goes
    parts = {}
    for name, entry in payload["sections"].items():
        for part, value in entry.get("result", {}).items():
            if isinstance(value, dict) and value.get("status") == "skipped":
                parts[f"{name}.{part}"] = value["reason"]
    payload["skipped_parts"] = parts
    payload["ok"] = all(e["status"] == "ok" for n, e in payload["sections"].items() if n in chosen)
    payload["total_seconds"] = time.perf_counter() - t0
    payload["finished"] = C.now()
    C.write_json(json_path, payload)
    states = ", ".join(f"{n} {e['status']}" for n, e in payload["sections"].items())
    print(f"gpu_check: {'ok' if payload['ok'] else 'FAILED'} in {payload['total_seconds']:.1f} s ({states})")
    return payload


if __name__ == "__main__":
    result = main(t0=T0)
    sys.exit(0 if result["ok"] else 1)
