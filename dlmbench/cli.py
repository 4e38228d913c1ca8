"""The ``dlmbench`` command line (longer than 400 lines because it holds every
sub-command; each is a thin shell over a module named for its work).

    dlmbench run --models elf,mdlm --steps 32,1024     # the main job
    dlmbench leaderboard runs/default -o leaderboard/README.md
    dlmbench new-plugin mymodel                         # scaffold a plugin package

Heavy imports (torch, transformers) happen inside the commands so ``--help`` is fast.
Errors the user can fix print one clear message and exit with a distinct code
(2 config, 3 checkpoint, 4 hub unavailable, 5 file system); set ``DLMBENCH_DEBUG=1``
for tracebacks.

This module is where process state becomes run state: it reads the operator's
variables (``DLMBENCH_LOAD_PLUGINS``, ``DLMBENCH_DISABLE_PLUGIN_AUTOLOAD``,
``DLMBENCH_ONLINE``, the ``HF_*`` switches), builds one plugin manager per invocation
and one :class:`~dlmbench.context.RunContext` per command, and passes both on.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
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


def _scan_plugins_flag(args: list[str]) -> str | None:
    """The value of a sub-command's ``--plugins`` before click parses it, so that the one
    plugin manager (which also supplies plugin sub-commands) honours it."""
    for i, arg in enumerate(args):
        if arg == "--plugins" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--plugins="):
            return arg.split("=", 1)[1]
    return None


def plugin_manager():
    """This invocation's plugin manager, built once: entry points limited by ``--plugins``
    (else ``DLMBENCH_LOAD_PLUGINS``), none with ``DLMBENCH_DISABLE_PLUGIN_AUTOLOAD``. A
    plugin that failed to load is named on stderr, once; the others work."""
    ctx = click.get_current_context()
    obj = ctx.find_root().ensure_object(dict)
    if "pm" not in obj:
        from dlmbench.plugins import get_plugin_manager

        flag = obj.get("plugins_flag")
        env = os.environ.get("DLMBENCH_LOAD_PLUGINS")
        only = _csv(flag, "plugins") if flag is not None else (_csv(env, "plugins") if env is not None else None)
        autoload = not os.environ.get("DLMBENCH_DISABLE_PLUGIN_AUTOLOAD")
        obj["pm"] = pm = get_plugin_manager(only=only, autoload=autoload)
        for message in pm.failures.values():
            click.echo(f"warning: {message}", err=True)
    return obj["pm"]


def _registry():
    from dlmbench.plugins import build_registry

    obj = click.get_current_context().find_root().ensure_object(dict)
    if "registry" not in obj:
        obj["registry"] = build_registry(plugin_manager())
    return obj["registry"]


def run_context(config, join_world: bool = False):
    """The command's run context: the config's cache and device, the hub's state (probed
    once unless the user switched it off, or on with ``DLMBENCH_ONLINE=1``), and for the
    commands that train or sample, the ``torchrun`` world."""
    from dlmbench import distributed
    from dlmbench.context import RunContext
    from dlmbench.environment import hub_offline, hub_reachable, switch_hub_libraries_offline

    offline, reason = hub_offline(), "HF_HUB_OFFLINE is set"
    if not offline and os.environ.get("DLMBENCH_ONLINE") != "1" and not hub_reachable():
        switch_hub_libraries_offline()  # the HF libraries then fail at once, not after minutes
        offline, reason = True, "huggingface.co cannot be reached"
    world = distributed.setup() if join_world else distributed.World()
    return RunContext.create(cache=config.cache, device=config.device, offline=offline,
                             offline_reason=reason if offline else None, world=world, threads=config.threads)


def run_config_from_options(opts: dict[str, Any]):
    """Turn CLI options into a validated RunConfig (preset <- file <- flags <- --set)."""
    from dlmbench.config import build_run_config, deep_merge, parse_override

    over: dict[str, Any] = {}
    budget: dict[str, Any] = {}
    if opts.get("models"):
        over["models"] = _csv(opts["models"], "models")
    for key, field, cast in (("steps", "steps", int), ("seeds", "seeds", int), ("train_seeds", "train_seeds", int)):
        if opts.get(key):
            budget[field] = _csv(opts[key], key, cast)
    for key in ("num_samples", "train_tokens", "seq_len", "batch_size"):
        if opts.get(key) is not None:
            budget[key] = opts[key]
    if opts.get("evaluator"):
        budget["evaluator"] = opts["evaluator"]
    if budget:
        over["budget"] = budget
    for key in ("task", "name", "out", "device", "cache", "protocol"):
        if opts.get(key):
            over[key] = opts[key]
    if opts.get("metrics"):
        over["metrics"] = _csv(opts["metrics"], "metrics")  # NAME or NAME:KEY=VALUE:...
    if opts.get("precision"):
        over["precision"] = opts["precision"]
    if opts.get("compile"):
        over["compile"] = True
    if opts.get("threads") is not None:
        over["threads"] = opts["threads"]
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
        click.option("--train-seeds", help="Comma-separated training seeds: one model trained per seed "
                                           "(the table's spread then includes training)."),
        click.option("--num-samples", type=int, help="Samples per cell."),
        click.option("--train-tokens", type=int, help="Training tokens per model (batch x length x steps)."),
        click.option("--seq-len", type=int, help="Sequence length."),
        click.option("--batch-size", type=int, help="Training batch size."),
        click.option("--evaluator", help="Judge: oracle, or an evaluator LM name/path."),
        click.option("--metrics", help="Comma-separated metrics (default: the task's), each NAME or "
                                       "NAME:KEY=VALUE:..., e.g. gen-ppl,bleu:lowercase=true."),
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
        click.option("--protocol", help="Named metric settings: dlmbench (default), mdlm-duo or elf "
                                         "(each reference's evaluation code; see README, Protocols)."),
        click.option("--threads", type=int,
                     help="torch CPU threads (intra- and inter-op; default 1, the committed tables' setting; "
                          "more is faster and changes float rounding, hence the trained model)."),
        click.option("--plugins", help="Load only these plugin entry points (comma-separated)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class PluginCommandGroup(click.Group):
    """Looks up plugin-provided sub-commands (``register_commands``) on demand, through
    the invocation's one plugin manager."""

    def resolve_command(self, ctx, args):
        ctx.ensure_object(dict)["plugins_flag"] = _scan_plugins_flag(args[1:])
        return super().resolve_command(ctx, args)

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and not getattr(self, "_plugins_loaded", False):
            self._plugins_loaded = True
            with ctx:
                plugin_manager().hook.register_commands(cli=self)
            command = super().get_command(ctx, name)
        return command


@click.group(cls=PluginCommandGroup)
@click.version_option(package_name="dlmbench")
def cli() -> None:
    """dlmbench: compare diffusion language models under identical budgets.

    Start with `dlmbench run` (trains tiny models offline on CPU and evaluates them),
    then `dlmbench leaderboard`. `dlmbench ls` lists models, samplers, metrics, tasks.
    """


def preset_defaults() -> str:
    """What each preset sets when a flag does not, for ``run --help``."""
    from dlmbench.config import PRESETS, Budget

    lines = []
    for name, preset in PRESETS.items():
        b = Budget.model_validate(preset["budget"])
        lines.append(f"{name}: task {preset['task']}; steps {','.join(map(str, b.steps))}; seeds "
                     f"{','.join(map(str, b.seeds))}; {b.num_samples} samples per cell; {b.counted_train_tokens:,} "
                     f"training tokens (batch {b.batch_size} x length {b.seq_len} x {b.train_steps} steps); "
                     f"evaluator {b.evaluator}.")
    return "\b\nPreset defaults (--preset; tiny unless set):\n" + "\n".join(lines)


class PresetHelpCommand(click.Command):
    """``run``: its help ends with the presets' defaults, built only when help is shown."""

    def format_epilog(self, ctx, formatter):
        self.epilog = preset_defaults()
        super().format_epilog(ctx, formatter)


@cli.command(cls=PresetHelpCommand)
@run_options
@click.option("--no-progress", is_flag=True, help="Hide progress bars (one line per phase and cell still prints).")
@click.option("--retrain", is_flag=True, help="Train every model again, replacing its cached checkpoint.")
@click.option("--leaderboard/--no-leaderboard", default=True,
              help="Keep OUT/leaderboard.md current: rewritten after every finished cell.")
@click.option("--jobs", default="auto", show_default=True,
              help="Worker processes, each training and scoring one model at a time: one cheap model per "
                   "worker first, then the longest (the records stay those of --jobs 1). auto: cores / --threads on CPU, 1 on one GPU, "
                   "one per --devices entry.")
@click.option("--devices", help="One worker per listed GPU, e.g. cuda:0,cuda:1 (the workers are spawned).")
@click.option("--smoke", is_flag=True,
              help="Prove a paper config runs: its models at true size and length on local stand-ins (grammar "
                   "text, tokenizers of the reference sizes, a random T5-small, GPT-2 Large at 2 layers), 2 "
                   "training steps and one 2-step cell per model, into runs/NAME-smoke; prints time and peak "
                   "memory per phase.")
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
    from dlmbench.plugins import plugin_versions
    from dlmbench.runner import Runner
    from dlmbench.workers import parse_devices, parse_jobs, plan_workers

    jobs, devices = parse_jobs(opts["jobs"]), parse_devices(opts["devices"])  # a bad value stops before any work
    registry = _registry()
    for entry in config.models:
        registry.model(entry.name)  # unknown names fail before any work, with a did-you-mean
    echo: Any = click.echo
    if opts["smoke"]:
        from dlmbench.smoke import PhaseClock, smoke_config

        if devices or (jobs or 1) > 1:
            raise ConfigError("--smoke times each phase and its peak memory in one process; drop --jobs/--devices")
        echo = PhaseClock(click.echo)
        config = smoke_config(config, Path(config.cache) / "smoke")
        shutil.rmtree(config.out_dir, ignore_errors=True)  # NAME-smoke: a smoke starts afresh, never resumes
        echo(f"smoke: stand-ins and data ready; {config.name} at seq_len {config.budget.seq_len}")
    context = run_context(config, join_world=True)
    workers = None if opts["smoke"] else plan_workers(opts["jobs"], opts["devices"], config, registry, context)
    board = config.out_dir / "leaderboard.md"
    write_board = BoardWriter(board, "dlmbench run " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
                              config.budget_hash())
    runner = Runner(config, registry, context, plugin_versions(plugin_manager()), echo=echo,
                    progress=not opts["no_progress"], on_cell=write_board if opts["leaderboard"] else None,
                    retrain=opts["retrain"] or opts["smoke"], workers=workers)  # a smoke run always trains
    records = runner.run()
    if not context.world.is_main:
        return
    click.echo(summary_table(records))
    if opts["smoke"]:
        click.echo(echo.summary())
    if opts["leaderboard"]:
        write_board()
        click.echo(f"results: {config.out_dir}/cells, leaderboard: {board}")
    failed = [r for r in records if not r.ok]
    if failed:
        click.echo(f"{len(failed)} cell(s) failed; see the records for the errors", err=True)
        sys.exit(1)


class BoardWriter:
    """Rewrites OUT/leaderboard.md from the stored records, so a long run shows its partial
    table as it goes. An object, not a closure, so that it pickles: each worker process of
    ``--jobs`` calls it after its own cells (every write is atomic; the last one wins)."""

    def __init__(self, board: Path, command: str, budget_hash: str):
        self.board, self.command, self.budget_hash = board, command, budget_hash

    def __call__(self, _record=None) -> None:
        from dlmbench.atomic import write_text_atomic
        from dlmbench.leaderboard import render_markdown
        from dlmbench.results import load_records

        cells, models = load_records([self.board.parent])
        budgets = {c.budget_hash for c in cells}
        mine = self.budget_hash if budgets - {self.budget_hash} else None  # the command made only its own
        write_text_atomic(self.board, render_markdown(cells, models, command=self.command, command_budget=mine))


def summary_table(records: list[dict]) -> str:
    from tabulate import tabulate

    rows = []
    for r in records:
        metrics = r.metrics_summary()
        rows.append([r.label, r.steps, r.seed,
                     f"{r.nfe or 0:g}" if r.ok else "-",
                     f"{r.wall_time_s or 0:.1f}" if r.ok else "-",
                     metrics if r.ok else f"FAILED: {(r.error or '')[:60]}"])
    return tabulate(rows, headers=["model/sampler", "steps", "seed", "NFE", "time (s)", "metrics"])


@cli.command()
@run_options
@click.option("--no-progress", is_flag=True)
@click.option("--retrain", is_flag=True, help="Train again even when a cached checkpoint matches.")
def train(**opts: Any) -> None:
    """Train each model under the budget's token count and cache its checkpoint."""
    config = run_config_from_options(opts)
    import torch

    from dlmbench.build import TaskViews, build_model
    from dlmbench.runner import Runner

    registry = _registry()
    runner = Runner(config, registry, run_context(config, join_world=True), echo=click.echo,
                    progress=not opts["no_progress"], retrain=opts["retrain"])
    views = TaskViews(config, registry, runner.ctx)
    for entry in config.models:
        data = views.of(entry)
        for seed in config.budget.training_seeds:
            torch.manual_seed(seed)  # the initial weights, as the runner draws them
            model = build_model(entry, config.preset, registry, data)
            runner.obtain(model, data, seed)
            click.echo(f"{entry.name} (training seed {seed}): {runner.checkpoint_slot(model, data, seed).path}")


@cli.command()
@run_options
@click.option("--checkpoint", type=click.Path(), help="A checkpoint file (default: the cached one).")
@click.option("--sampler", help="Sampler name (default: the model's).")
@click.option("--count", type=int, default=8, show_default=True, help="How many samples to print.")
@click.option("--seed", type=int, default=0, show_default=True)
def sample(**opts: Any) -> None:
    """Print samples from a trained model (first --models entry, first --steps value)."""
    config = run_config_from_options(opts)
    from dlmbench.build import TaskViews, build_model, build_sampler
    from dlmbench.checkpoint import checkpoint_slot, load_checkpoint
    from dlmbench.sampling import generate, to_generation

    registry = _registry()
    context = run_context(config, join_world=True)
    entry = config.models[0]
    if opts.get("sampler"):
        entry = entry.model_copy(update={"sampler": opts["sampler"]})
    data = TaskViews(config, registry, context).of(entry)
    model = build_model(entry, config.preset, registry, data)
    if opts.get("checkpoint"):
        load_checkpoint(model, opts["checkpoint"])
    else:
        per_position = data.bytes_per_position()[0] if config.budget.unit == "bytes" else None
        budget = config.budget.for_training(config.budget.training_seeds[0])  # the first trained model
        slot = checkpoint_slot(model, budget, config.precision, context.checkpoints, data.fingerprint(),
                               config.budget.steps_for(per_position))
        load_checkpoint(model, slot.path, slot.key)
    model.to(context.device)
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
    from dlmbench.probe import probe, report

    context = run_context(config)
    results = probe(config, _registry(), context, steps=opts["probe_steps"], start=opts["start"],
                    limit=opts["limit"], echo=click.echo)
    click.echo(report(results, context.device))
    if any(r.error for r in results):
        sys.exit(1)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--factors", help="Factors to change one at a time: sample-batch, threads, world (reuse the run's "
                                "models; the default); precision, source-truncation (train their own).")
@click.option("--steps", help="Re-run only these step budgets (default: all of the run's).")
@click.option("--seeds", help="Re-run only these sampling seeds.")
@click.option("--train-seeds", help="Re-run only the models of these training seeds.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the audit table here.")
def audit(run_dir: str, factors: str | None, steps: str | None, seeds: str | None, train_seeds: str | None,
          output: str | None) -> None:
    """Re-run cells of a finished run with one factor changed at a time, and tabulate each
    factor's effect on every metric against the run's own seed spread. Run it from the
    directory the run was made in (its checkpoint cache is found there); the run itself is
    not modified: variants go to RUN/audit/<factor>/."""
    from pathlib import Path

    from dlmbench.atomic import write_text_atomic
    from dlmbench.audit import DEFAULT_FACTORS, audit as run_audit

    chosen = {key: _csv(value, key.replace("_", "-"), int) if value else None
              for key, value in (("steps", steps), ("seeds", seeds), ("train_seeds", train_seeds))}
    names = _csv(factors, "factors") if factors else list(DEFAULT_FACTORS)
    command = " ".join(["dlmbench audit", run_dir, "--factors", ",".join(names)] + [
        f"--{k.replace('_', '-')} {','.join(map(str, v))}" for k, v in chosen.items() if v])
    text = run_audit(run_dir, _registry(), names, chosen, echo=click.echo, command=command)
    target = Path(run_dir) / "audit" / "audit.md"
    write_text_atomic(target, text)
    if output:
        write_text_atomic(Path(output), text)
    click.echo(f"wrote {target}" + (f" and {output}" if output else ""))


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--metrics",
              help="Comma-separated metrics to (re)compute from stored samples, each NAME or "
                   "NAME:KEY=VALUE:..., e.g. bleu:lowercase=true (default: the run's own).")
@click.option("--protocol", default="dlmbench", show_default=True,
              help="Score under this protocol's settings (dlmbench, mdlm-duo, elf); results of "
                   "another protocol are stored beside the run's as NAME@PROTOCOL.")
@click.option("--plugins", help="Load only these plugin entry points.")
def eval_(run_dir: str, metrics: str | None, protocol: str, plugins: str | None) -> None:
    """Score the stored samples of a finished run with (other) metrics or under another
    protocol; samples nothing.

    The run's own budget (evaluator), cache and device are used, from its run.json."""
    from pydantic import ValidationError

    from dlmbench.config import MetricEntry, RunConfig, explain
    from dlmbench.protocol import get_protocol
    from dlmbench.rescore import rescore
    from dlmbench.results import ResultStore

    get_protocol(protocol)  # an unknown name fails before any work
    try:
        entries = [MetricEntry.model_validate(m) for m in _csv(metrics, "metrics")] if metrics else None
    except ValidationError as exc:
        raise explain(exc, "--metrics") from None
    run = ResultStore(run_dir).read_run()
    if run is None:
        raise ConfigError(f"{run_dir}: no valid run.json; is it a `dlmbench run` results directory?")
    context = run_context(RunConfig.model_validate(run.config))
    n, failed = rescore(run_dir, entries, _registry(), context, protocol)
    click.echo(f"re-scored {n} cell(s) in {run_dir}")
    for cid, why in failed.items():
        click.echo(f"cell {cid} not re-scored (left as it was): {why}", err=True)
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", type=click.Path(), help="Write markdown here (default: stdout).")
@click.option("--plot", type=click.Path(), help="Also write a PNG of quality vs steps and vs wall time.")
@click.option("--metric", help="Metric to plot (default: the first).")
@click.option("--command", "command", help="The command that produced the results (stated above the tables).")
def leaderboard(results: tuple[str, ...], output: str | None, plot: str | None, metric: str | None, command: str | None) -> None:
    """Render markdown tables (and a plot) from stored results only."""
    from dlmbench.leaderboard import render_markdown, render_plot
    from dlmbench.atomic import write_text_atomic
    from dlmbench.results import load_records

    cells, models = load_records(results)
    if not cells:
        raise ConfigError(f"no result records found under {', '.join(results)}; run `dlmbench run` first")
    text = render_markdown(cells, models, command=command)
    if output:
        write_text_atomic(output, text)
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

    from dlmbench.plugins import describe_plugins

    click.echo(json.dumps([asdict(p) for p in describe_plugins(plugin_manager())], indent=2))


@cli.command(name="ls")
@click.option("--plugins", help="Load only these plugin entry points.")
def ls(plugins: str | None) -> None:
    """List registered models (with samplers), metrics and tasks."""
    registry = _registry()
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
    from dlmbench.build import build_metric, build_model_config, build_sampler
    from dlmbench.context import RunContext

    registry = _registry()
    task_cls, _ = registry.task(config.task)
    for metric in config.metrics or []:
        build_metric(metric, registry, config.budget.evaluator, RunContext(offline=True))
    for entry in config.models:
        build_model_config(entry, config.preset, registry)
        build_sampler(entry, registry, task_cls.conditional)
    click.echo(json.dumps(config.model_dump(mode="json"), indent=2))
    from dlmbench.hub_needs import hub_needs

    for need in hub_needs(config, registry):  # what to fetch before going offline (stderr: stdout stays JSON)
        click.echo(f"needs {need.repo} ({need.what}): {'cached' if need.cached() else need.fetch()}", err=True)
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
    except OSError as exc:  # the file system said no: read-only, not a directory, disk full
        if os.environ.get("DLMBENCH_DEBUG"):
            raise
        where = f" {exc.filename}" if exc.filename else ""
        click.echo(f"error: cannot write or read{where}: {exc.strerror or exc}; choose another --out or "
                   f"--cache, or free the disk", err=True)
        sys.exit(5)
    except SystemExit:
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
