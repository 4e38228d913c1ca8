"""What does going through dlmbench cost, against the same model's bare loop?

Training: :func:`dlmbench.training.fit` for N steps (with a progress callback like the
runner's tqdm bar) against a bare loop doing the same algorithmic work: the same seeded
batch order, ``model.loss``, backward, gradient clipping and EMA update when the config
uses them, the same optimiser step; without the harness (no LossModule wrapper, no lr
warm-up bookkeeping, no finiteness check, no per-step loss readback, no callback).

Sampling: :func:`dlmbench.sampling.generate` (NFE hooks, micro-batching, generator
handling, shape checks, gather) against ``sampler.sample(model, SampleRequest(...))``
called directly with the same seeds.

Arms run interleaved (A B C, then C B A, ...) from the same initial weights; medians are
reported with overhead = harness / bare - 1. A second bare arm (``bare2``) is timed the
same way: its "overhead" is the measurement's noise floor on this machine. Before timing,
one short run of each arm checks they do the same work (identical losses and weights for
training, identical ids for sampling).

    python benchmarks/harness_overhead.py --models elf,mdlm,duo,ar
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SCRIPT = "harness_overhead"


def bare_fit(model, train, batch_size: int, steps: int, seed: int = 0, record: bool = False) -> list[float]:
    """The training work of :func:`dlmbench.training.fit`, without the harness."""
    import torch

    from dlmbench.data import Batch
    from dlmbench.ema import EMA
    from dlmbench.training import build_optimizer

    cfg = model.config
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = build_optimizer(model)
    params = model.trainable_parameters()
    ema = EMA(params, cfg.ema_decay) if cfg.ema_decay > 0 else None
    clip = cfg.grad_clip if cfg.grad_clip and cfg.grad_clip > 0 and not math.isinf(cfg.grad_clip) else None
    if callable(getattr(model, "on_fit_start", None)):
        model.on_fit_start(steps)  # model behaviour (Duo's curriculum length), not harness
    model.train()
    order = torch.randperm(train.shape[0], generator=gen)
    cursor = 0
    losses = []
    for _ in range(steps):
        if cursor + batch_size > order.numel():
            order, cursor = torch.randperm(train.shape[0], generator=gen), 0
        rows = order[cursor : cursor + batch_size]
        cursor += batch_size
        loss = model.loss(Batch(train[rows].to(device)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if ema is not None:
            ema.update()
        if record:
            losses.append(float(loss.detach()))
    if ema is not None:
        ema.copy_to_model()
    model.eval()
    return losses


def harness_fit(model, train, batch_size: int, steps: int, seed: int = 0):
    """``fit`` with a progress callback shaped like the runner's (tqdm, to a buffer)."""
    from tqdm.auto import tqdm

    from dlmbench.training import fit

    bar = tqdm(total=steps, desc=f"train {model.name}", file=io.StringIO(), leave=False)

    def tick(step: int, loss: float) -> None:
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    report = fit(model, train, batch_size=batch_size, steps=steps, seed=seed, progress=tick)
    bar.close()
    return report


def bare_sample(model, sampler, steps: int, num_samples: int, seed: int, batch_size: int):
    import torch

    from dlmbench.data import SampleRequest
    from dlmbench.sampling import seed_for

    device = next(model.parameters()).device
    model.eval()
    outs = []
    with torch.no_grad():
        for b, lo in enumerate(range(0, num_samples, batch_size)):
            n = min(batch_size, num_samples - lo)
            gen = torch.Generator(device=device).manual_seed(seed_for(seed, b))
            outs.append(sampler.sample(model, SampleRequest(steps=steps, num_samples=n, generator=gen)))
    return torch.cat(outs)


def harness_sample(model, sampler, steps: int, num_samples: int, seed: int, batch_size: int):
    from dlmbench.sampling import generate

    return generate(model, sampler, steps, num_samples, seed, batch_size=batch_size).ids


def summarise(times: dict[str, list[float]], harness: str, bare: str, null: str | None) -> dict:
    h, b = C.median(times[harness]), C.median(times[bare])
    paired = [x / y for x, y in zip(times[harness], times[bare])]
    out = {
        "harness_s": h,
        "bare_s": b,
        "overhead_pct": 100 * (h / b - 1),
        "paired_overhead_pct": 100 * (C.median(paired) - 1),
        "times_s": times,
    }
    if null is not None:
        out["noise_floor_pct"] = 100 * (C.median(times[null]) / b - 1)
    return out


def check_training(built, batch_size: int, device) -> dict:
    """Both arms, 3 steps from the same weights with warm-up off: same losses and weights."""
    from dlmbench.training import fit

    model = C.build_all([{"name": built.name, "options": {"warmup_steps": 0}}], device, data=built.data)[0].model
    model.prepare(built.data.train, 0)  # fit would do it once; bare_fit does not
    init = {k: v.clone() for k, v in model.state_dict().items()}
    losses_h = fit(model, built.data.train, batch_size=batch_size, steps=3, seed=0).losses
    after_h = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(init)
    losses_b = bare_fit(model, built.data.train, batch_size, 3, seed=0, record=True)
    diff = max(float((after_h[k].float() - v.float()).abs().max()) if v.numel() else 0.0
               for k, v in model.state_dict().items())
    return {"losses_harness": losses_h, "losses_bare": losses_b, "same_losses": losses_h == losses_b,
            "max_abs_weight_diff": diff}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, SCRIPT)
    parser.add_argument("--train-steps", type=int, default=20, help="optimiser steps per timed repetition")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the tiny budget's)")
    parser.add_argument("--sample-steps", type=int, default=32, help="sampling steps (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, default=None, help="samples per call (default: the tiny budget's)")
    parser.add_argument("--sample-batch-size", type=int, default=None, help="micro-batch (default: the budget's)")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per arm (interleaved)")
    parser.add_argument("--no-null", action="store_true", help="skip the bare-vs-bare noise-floor arm")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_steps, args.reps, args.sample_steps = 2, 2, 2
        args.num_samples = args.num_samples or 4
        args.batch_size = args.batch_size or 8
    started = C.now()
    device = C.setup_torch(args)
    import torch

    skipped: dict[str, str] = {}
    budget = {} if not args.quick else {"task_options": {"train_sentences": 256, "valid_sentences": 16}}
    built = C.build_all(C.parse_models(args.models), device, skipped=skipped, **budget)
    results = []
    for b in built:
        cfgb = b.config.budget
        bs = args.batch_size or cfgb.batch_size
        ns = args.num_samples or cfgb.num_samples
        sbs = args.sample_batch_size or cfgb.sample_batch_size
        model, train = b.model, b.data.train
        print(f"[{b.label}] training {args.train_steps} steps x batch {bs}; sampling {ns} x {args.sample_steps} steps")
        try:
            check = check_training(b, bs, device)
            model.prepare(train, 0)  # once, untimed: model work before training (ELF's encoder)
            init = {k: v.clone() for k, v in model.state_dict().items()}

            def restore():
                model.load_state_dict(init)

            arms = {
                "harness": lambda: harness_fit(model, train, bs, args.train_steps),
                "bare": lambda: bare_fit(model, train, bs, args.train_steps),
            }
            if not args.no_null:
                arms["bare2"] = lambda: bare_fit(model, train, bs, args.train_steps)
            t_train = C.interleaved(arms, args.reps, device, before=restore)
            restore()

            ids_h = harness_sample(model, b.sampler, args.sample_steps, ns, 0, sbs)
            ids_b = bare_sample(model, b.sampler, args.sample_steps, ns, 0, sbs)
            same_ids = bool(torch.equal(ids_h.cpu(), ids_b.cpu()))
            arms = {
                "harness": lambda: harness_sample(model, b.sampler, args.sample_steps, ns, 0, sbs),
                "bare": lambda: bare_sample(model, b.sampler, args.sample_steps, ns, 0, sbs),
            }
            if not args.no_null:
                arms["bare2"] = lambda: bare_sample(model, b.sampler, args.sample_steps, ns, 0, sbs)
            t_sample = C.interleaved(arms, args.reps, device)
        except Exception as exc:  # noqa: BLE001 - a model that breaks mid-way is reported, not fatal
            text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            print(f"NOTE: {b.label} failed during the benchmark ({text})")
            skipped[b.label] = text
            continue
        null = None if args.no_null else "bare2"
        results.append({
            "model": b.name, "label": b.label,
            "train": {"steps": args.train_steps, "batch_size": bs, "check": check,
                      **summarise(t_train, "harness", "bare", null)},
            "sample": {"steps": args.sample_steps, "num_samples": ns, "micro_batch": sbs, "same_ids": same_ids,
                       **summarise(t_sample, "harness", "bare", null)},
        })

    rows = []
    for r in results:
        for phase in ("train", "sample"):
            p = r[phase]
            rows.append({
                "model": r["label"], "phase": phase,
                "harness s": p["harness_s"], "bare s": p["bare_s"],
                "overhead %": p["overhead_pct"], "paired %": p["paired_overhead_pct"],
                "noise floor %": p.get("noise_floor_pct"),
                "same work": p["check"]["same_losses"] and p["check"]["max_abs_weight_diff"] == 0
                if phase == "train" else p["same_ids"],
            })
    print()
    print(C.table(rows, floatfmt=".3g"))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    payload = {**C.envelope(SCRIPT, args, device, started), "target_overhead_pct": 3.0,
               "results": results, "table": rows, "skipped": skipped}
    C.write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
