"""The ``dlmbench`` command line.

    dlmbench run --models elf,mdlm --steps 32,1024     # the main job
    dlmbench leaderboard runs/default -o leaderboard/README.md
    dlmbench new-plugin mymodel                         # scaffold a plugin package

Heavy imports (torch, transformers) happen inside the commands so ``--help`` is fast.
Errors the user can fix print one clear message and exit with a distinct code
(2 config, 3 checkpoint, 4 hub unavailable); set ``DLMBENCH_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any

import click

from dlmbench.errors import ConfigError, DLMBenchError


def _csv(value: str | None, field: str, cast=str) -> list | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    try:
        return [cast(v) for v in items]
    except ValueError:
        raise ConfigError(f"--{field} {value!r}: expected comma-separated {cast.__name__}s, e.g. --{field} 32,1024") from None


def _registry(plugins: str | None):
    from dlmbench.plugins import load_registry

    return load_registry(only=_csv(plugins, "plugins"))


def run_config_from_options(opts: dict[str, Any]):
    """Turn CLI options into a validated RunConfig (preset <- file <- flags <- --set)."""
    from dlmbench.config import build_run_config, deep_merge, parse_override

    over: dict[str, Any] = {}
    budget: dict[str, Any] = {}
    if opts.get("models"):
        over["models"] = _csv(opts["models"], "models")
    for key, field, cast in (("steps", "steps", int), ("seeds", "seeds", int)):
        if opts.get(key):
            budget[field] = _csv(opts[key], key, cast)
    for key in ("num_samples", "train_tokens", "seq_len", "batch_size"):
        if opts.get(key) is not None:
            budget[key] = opts[key]
    if opts.get("evaluator"):
        budget["evaluator"] = opts["evaluator"]
    if budget:
        over["budget"] = budget
    for key in ("task", "name", "out", "device", "cache"):
        if opts.get(key):
            over[key] = opts[key]
    if opts.get("metrics"):
        over["metrics"] = _csv(opts["metrics"], "metrics")
    if opts.get("precision"):
        over["precision"] = opts["precision"]
    if opts.get("compile"):
        over["compile"] = True
    if opts.get("preset"):
        over["preset"] = opts["preset"]
    for item in opts.get("set") or ():
        over = deep_merge(over, parse_override(item))
    return build_run_config(file=opts.get("config"), overrides=over)


def run_options(f):
    """Options shared by run, train and validate-config."""
    options = [
        click.option("--models", help="Comma-separated model names, e.g. elf,mdlm,duo,ar."),
        click.option("--steps", help="Comma-separated sampling step budgets, e.g. 32,1024."),
        click.option("--task", help="Task name, e.g. grammar, grammar-translate, text:PATH."),
        click.option("--preset", help="Budget preset: tiny (CPU default), owt-small, wmt14-de-en, xsum."),
        click.option("--seeds", help="Comma-separated sampling seeds."),
        click.option("--num-samples", type=int, help="Samples per cell."),
        click.option("--train-tokens", type=int, help="Training tokens per model (batch x length x steps)."),
        click.option("--seq-len", type=int, help="Sequence length."),
        click.option("--batch-size", type=int, help="Training batch size."),
        click.option("--evaluator", help="Judge: oracle, or an evaluator LM name/path."),
        click.option("--metrics", help="Comma-separated metric names (default: the task's)."),
        click.option("--config", type=click.Path(), help="YAML or TOML run config."),
        click.option("--set", "set", multiple=True, help="Override any field: --set budget.seq_len=64."),
        click.option("--name", help="Run name (results go to runs/NAME)."),
        click.option("--out", help="Results directory."),
        click.option("--cache", help="Checkpoint cache directory."),
        click.option("--device", help="auto, cpu or cuda."),
        click.option("--precision", type=click.Choice(["fp32", "bf16"]),
                     help="fp32 (default) or bf16: bfloat16 autocast in training and sampling; "
                          "part of the checkpoint key."),
        click.option("--compile", "compile", is_flag=True, default=None,
                     help="torch.compile the network's sub-modules (NFE still counted; "
                          "compile time is recorded as compile_seconds)."),
        click.option("--plugins", help="Load only these plugin entry points (comma-separated)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class PluginCommandGroup(click.Group):
    """Looks up plugin-provided sub-commands (``register_commands``) on demand."""

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and not getattr(self, "_plugins_loaded", False):
            self._plugins_loaded = True
            from dlmbench.plugins import get_plugin_manager

            get_plugin_manager().hook.register_commands(cli=self)
            command = super().get_command(ctx, name)
        return command


@click.group(cls=PluginCommandGroup)
@click.version_option(package_name="dlmbench")
def cli() -> None:
    """dlmbench: compare diffusion language models under identical budgets.

    Start with `dlmbench run` (trains tiny models offline on CPU and evaluates them),
    then `dlmbench leaderboard`. `dlmbench ls` lists models, samplers, metrics, tasks.
    """


def _prepare_runtime() -> None:
    from dlmbench.environment import set_hub_offline_if_unreachable

    if set_hub_offline_if_unreachable():
        os.environ.setdefault("DLMBENCH_HUB_OFFLINE_REASON", "hub unreachable")


@cli.command()
@run_options
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--leaderboard/--no-leaderboard", default=True, help="Write OUT/leaderboard.md at the end.")
def run(**opts: Any) -> None:
    """Train (or reuse) every model under one budget and evaluate every cell.

    Each finished cell is written at once; re-running the same command skips finished
    cells, so an interrupted run simply resumes.

    \b
    GPU fast path: --precision bf16 (bfloat16 autocast; a separate checkpoint),
    --compile (torch.compile; compile time recorded), and a larger sampling
    micro-batch found with `dlmbench probe-batch` and set with
    --set budget.sample_batch_size=N (it changes the seeds, hence the samples).
    """
    config = run_config_from_options(opts)
    _prepare_runtime()
    from dlmbench.leaderboard import render_markdown
    from dlmbench.plugins import build_registry, get_plugin_manager, plugin_versions
    from dlmbench.results import load_records
    from dlmbench.runner import Runner

    pm = get_plugin_manager(only=_csv(opts.get("plugins"), "plugins"))
    registry = build_registry(pm)
    for entry in config.models:
        registry.model(entry.name)  # unknown names fail before any work, with a did-you-mean
    runner = Runner(config, registry, plugin_versions(pm), echo=click.echo, progress=not opts["no_progress"])
    records = runner.run()
    if not runner.world.is_main:
        return
    click.echo(summary_table(records))
    if opts["leaderboard"]:
        cells, models = load_records([config.out_dir])
        command = "dlmbench run " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        path = config.out_dir / "leaderboard.md"
        path.write_text(render_markdown(cells, models, command=command))
        click.echo(f"results: {config.out_dir}/cells, leaderboard: {path}")
    failed = [r for r in records if r.get("status") != "ok"]
    if failed:
        click.echo(f"{len(failed)} cell(s) failed; see the records for the errors", err=True)
        sys.exit(1)


def summary_table(records: list[dict]) -> str:
    from tabulate import tabulate

    rows = []
    for r in records:
        metrics = ", ".join(f"{k}={v['value']:.4g}" for k, v in (r.get("metrics") or {}).items())
        rows.append([r.get("label", r["model"]), r.get("steps"), r.get("seed"),
                     f"{r.get('nfe', 0):g}" if r.get("status") == "ok" else "-",
                     f"{r.get('wall_time_s', 0):.1f}" if r.get("status") == "ok" else "-",
                     metrics if r.get("status") == "ok" else f"FAILED: {r.get('error', '')[:60]}"])
    return tabulate(rows, headers=["model/sampler", "steps", "seed", "NFE", "time (s)", "metrics"])


@cli.command()
@run_options
@click.option("--no-progress", is_flag=True)
def train(**opts: Any) -> None:
    """Train each model under the budget's token count and cache its checkpoint."""
    config = run_config_from_options(opts)
    _prepare_runtime()
    from dlmbench.runner import Runner, build_model, build_task

    registry = _registry(opts.get("plugins"))
    runner = Runner(config, registry, echo=click.echo, progress=not opts["no_progress"])
    data = build_task(config, registry)
    for entry in config.models:
        model = build_model(entry, config.preset, registry, data)
        runner.obtain(model, data)
        click.echo(f"{entry.name}: {runner.checkpoint_path(model)[0]}")


@cli.command()
@run_options
@click.option("--checkpoint", type=click.Path(), help="A checkpoint file (default: the cached one).")
@click.option("--sampler", help="Sampler name (default: the model's).")
@click.option("--count", type=int, default=8, show_default=True, help="How many samples to print.")
@click.option("--seed", type=int, default=0, show_default=True)
def sample(**opts: Any) -> None:
    """Print samples from a trained model (first --models entry, first --steps value)."""
    config = run_config_from_options(opts)
    _prepare_runtime()
    from dlmbench.checkpoint import load_checkpoint
    from dlmbench.runner import Runner, build_model, build_sampler, build_task
    from dlmbench.sampling import generate, to_generation

    registry = _registry(opts.get("plugins"))
    data = build_task(config, registry)
    entry = config.models[0]
    if opts.get("sampler"):
        entry = entry.model_copy(update={"sampler": opts["sampler"]})
    runner = Runner(config, registry, echo=click.echo)
    model = build_model(entry, config.preset, registry, data)
    path, key = runner.checkpoint_path(model)
    if opts.get("checkpoint"):
        load_checkpoint(model, opts["checkpoint"])
    else:
        load_checkpoint(model, path, key)
    model.to(runner.device)
    sampler = build_sampler(entry, registry, data.spec.prefix_len > 0)
    steps = config.budget.steps[0]
    prefixes = data.eval_prefixes[: opts["count"]] if data.eval_prefixes is not None else None
    result = generate(model, sampler, steps, opts["count"], opts["seed"], prefixes, precision=config.precision)
    generation = to_generation(result.ids, data.tokenizer, data.spec.prefix_len, data)
    click.echo(f"# {entry.name}/{sampler.name} steps={steps} NFE={result.nfe:g} ({result.seconds:.2f}s)")
    for i, text in enumerate(generation.texts):
        source = f"{generation.sources[i]}  ->  " if generation.sources else ""
        click.echo(f"{i:3d}: {source}{text}")


@cli.command(name="probe-batch")
@run_options
@click.option("--max", "limit", type=int, default=4096, show_default=True, help="Largest micro-batch to try.")
@click.option("--start", type=int, default=1, show_default=True, help="First micro-batch (then doubled).")
@click.option("--probe-steps", type=int, default=2, show_default=True,
              help="Sampling steps per try (memory does not grow with steps).")
def probe_batch(**opts: Any) -> None:
    """Find the largest sampling micro-batch that fits, per model.

    Builds each model as `dlmbench run` does and doubles one sampling micro-batch from
    --start until CUDA runs out of memory (on CPU: up to --max), e.g.
    `dlmbench probe-batch --models elf,mdlm --seq-len 1024 --device cuda`.
    It only advises: set budget.sample_batch_size yourself (micro-batches carry the
    generator seeds, so changing it changes the samples).
    """
    config = run_config_from_options(opts)
    _prepare_runtime()
    from dlmbench.environment import resolve_device
    from dlmbench.probe import probe, report

    results = probe(config, _registry(opts.get("plugins")), steps=opts["probe_steps"], start=opts["start"],
                    limit=opts["limit"], echo=click.echo)
    click.echo(report(results, resolve_device(config.device)))
    if any(r.error for r in results):
        sys.exit(1)


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--metrics", required=True, help="Comma-separated metrics to (re)compute from stored samples.")
@click.option("--plugins", help="Load only these plugin entry points.")
def eval_(run_dir: str, metrics: str, plugins: str | None) -> None:
    """Re-score the stored samples of a finished run with (other) metrics."""
    _prepare_runtime()
    from dlmbench.rescore import rescore

    n = rescore(run_dir, _csv(metrics, "metrics"), _registry(plugins))
    click.echo(f"re-scored {n} cell(s) in {run_dir}")


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", type=click.Path(), help="Write markdown here (default: stdout).")
@click.option("--plot", type=click.Path(), help="Also write a PNG of quality vs steps and vs wall time.")
@click.option("--metric", help="Metric to plot (default: the first).")
@click.option("--command", "command", help="The command that produced the results (stated above the tables).")
def leaderboard(results: tuple[str, ...], output: str | None, plot: str | None, metric: str | None, command: str | None) -> None:
    """Render markdown tables (and a plot) from stored results only."""
    from dlmbench.leaderboard import render_markdown, render_plot
    from dlmbench.results import load_records

    cells, models = load_records(results)
    if not cells:
        raise ConfigError(f"no result records found under {', '.join(results)}; run `dlmbench run` first")
    text = render_markdown(cells, models, command=command)
    if output:
        from pathlib import Path

        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
        click.echo(f"wrote {output}")
    else:
        click.echo(text)
    if plot:
        render_plot(cells, plot, metric)
        click.echo(f"wrote {plot}")


@cli.command()
@click.option("--plugins", help="Load only these plugin entry points.")
def plugins(plugins: str | None) -> None:
    """List loaded plugins with version, location and hooks (JSON)."""
    from dataclasses import asdict

    from dlmbench.plugins import describe_plugins, get_plugin_manager

    pm = get_plugin_manager(only=_csv(plugins, "plugins"))
    click.echo(json.dumps([asdict(p) for p in describe_plugins(pm)], indent=2))


@cli.command(name="ls")
@click.option("--plugins", help="Load only these plugin entry points.")
def ls(plugins: str | None) -> None:
    """List registered models (with samplers), metrics and tasks."""
    registry = _registry(plugins)
    click.echo("models:")
    for name, cls in sorted(registry.models.items()):
        samplers = ", ".join(registry.samplers_for(name))
        presets = ", ".join(cls.Config.presets)
        click.echo(f"  {name:12s} samplers: {samplers} (default {cls.default_sampler}); presets: {presets}")
    click.echo("metrics:")
    for name, cls in sorted(registry.metrics.items()):
        click.echo(f"  {name:18s} {'higher' if cls.higher_is_better else 'lower'} is better. {cls.description}")
    click.echo("tasks:")
    for name, cls in sorted(registry.tasks.items()):
        kind = "conditional" if cls.conditional else "unconditional"
        click.echo(f"  {name:18s} {kind}; metrics: {', '.join(cls.default_metrics)}")


@cli.command(name="validate-config")
@run_options
def validate_config(**opts: Any) -> None:
    """Resolve a config (preset, file, flags) and every name in it, without running."""
    config = run_config_from_options(opts)
    from dlmbench.runner import build_model_config, build_sampler

    registry = _registry(opts.get("plugins"))
    task_cls, _ = registry.task(config.task)
    for name in config.metrics or []:
        registry.metric(name)
    for entry in config.models:
        build_model_config(entry, config.preset, registry)
        build_sampler(entry, registry, task_cls.conditional)
    click.echo(json.dumps(config.model_dump(mode="json"), indent=2))
    click.echo("config is valid", err=True)


@cli.command(name="new-plugin")
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False))
def new_plugin(name: str, directory: str) -> None:
    """Scaffold an installable model plugin that passes the conformance kit."""
    from dlmbench.scaffold import scaffold

    path = scaffold(name, directory)
    click.echo(f"created {path}\nnext: pip install -e {path} && pytest {path}")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="dlmbench", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DLMBenchError as exc:
        if os.environ.get("DLMBENCH_DEBUG"):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except SystemExit:
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
