"""Generative perplexity (``gen-ppl``) under an evaluator causal LM from ``transformers``.

The default is the MDLM/Duo protocol as implemented (kuleshov-group/mdlm@c112c52
``diffusion.py: compute_generative_perplexity``, s-sahoo/duo@7c9b498
``metrics.py: record_generative_perplexity``; ELF's ``metrics_utils.py`` in
lillian039/ELF@b29d883 scores the same targets):

1. the decoded samples (``Generation.texts``) are re-tokenized with the evaluator's
   tokenizer, truncated to ``max_length`` (default: the evaluator context), no BOS;
2. each sequence is split into chunks of the evaluator context and each chunk is scored
   on its own: the NLL of token ``t+1`` given tokens ``<= t`` of the chunk, so **the
   first token of a chunk is never scored** and no conditioning token is added;
3. a target counts if it is not EOS, or if it is the first EOS of its chunk
   (``eos_rule="first-eos"``; the running EOS count includes the unscored first token);
4. Gen PPL = ``exp(sum NLL / sum weights)`` pooled over all tokens of all samples.

The variants papers disagree on are named settings, recorded in ``details``:

* ``eos_rule``: ``first-eos`` (reference), ``all`` (every target, EOS included),
  ``none`` (no EOS target). More EOS targets are scored under ``all`` >= ``first-eos``
  >= ``none``; because an evaluator predicts repeated EOS (padding) easily, counting
  them lowers Gen PPL, which is why the reference leaves them out.
* ``pooling``: ``corpus`` (reference) or ``per-sample``: the mean of per-sample
  perplexities, with its standard error. For samples of equal token count the
  per-sample mean is >= the corpus value (Jensen), so it reads worse.

dlmbench's defaults differ from the reference code in a few places, each a fix; every
one is a setting, so that a protocol can reproduce a paper's number exactly:

* ``padding``: ``unscored`` (default) pads rows to the longest of their batch and never
  scores padding, so the number does not depend on batching. ``reference``: every
  text of one reference call is EOS-padded to the call's longest row, padding is read by
  ``eos_rule`` like text, so the first padding EOS of each shorter row is scored
  (kuleshov-group/mdlm@c112c52 ``diffusion.py`` L496-506, L567-573; s-sahoo/duo@7c9b498
  ``metrics.py`` L136-146, L205-210; lillian039/ELF@b29d883 ``src/utils/metrics_utils.py``
  L128-138, L150-153).
* ``call_size``: how many samples one reference call scores (None: all of them). ELF
  scores all samples in one call (``src/generation.py`` L241-245); MDLM and Duo call once
  per sampling batch, ``loader.eval_batch_size`` (mdlm ``diffusion.py`` L421-428, duo
  ``main.py`` L121-126): 1 in MDLM's README, 8 in Duo's ``scripts/gen_ppl_owt_duo.sh``.
* ``remainder``: ``keep`` (default) or ``drop``: each call scores only whole evaluator
  batches of ``min(batch_size, call)`` rows and drops the rest, as MDLM (``diffusion.py``
  L545-548) and Duo (``metrics.py`` L185-187) do; ELF keeps them (L184-186). Dropped rows
  still widen their call's padding, as there.
* ``max_length``: re-tokenized text is truncated to ``max_length`` evaluator tokens,
  default the evaluator context; ``"model"``: the task's continuation length
  (``seq_len - prefix_len``), as MDLM (``diffusion.py`` L532-533) and Duo (``main.py``
  L125-126, ``config.model.length``) truncate.
* ``eos_weights``: ``or`` (default, MDLM/Duo: a target counts once if it is not EOS or
  if its chunk has seen exactly one EOS) or ``sum``: ELF adds the two indicators as
  integers (``metrics_utils.py`` L150-153), so a non-EOS target after a chunk's first EOS
  and before its second counts twice, in NLL and count alike. Only with ``first-eos``.
* ``precision``: the evaluator's dtype, ``fp32`` (default) or ``bf16`` as ELF loads it
  (``metrics_utils.py`` L169-172); log-probabilities are taken in float32 either way
  (there L147-149).
* ``skip_empty``: drop blank texts (empty after ``strip()``) before scoring, as ELF
  does (``src/generation.py`` L234-245, ``scripts/eval_ppl.py`` L64-78).

In every setting ``n`` counts the samples the value rests on: dropped, skipped and
unscored samples are left out of it, and ``details`` counts each.

dlmbench's ``Generation.texts`` are cut before the model's first EOS with special
tokens dropped, so an evaluator EOS appears only where the text spells it out; in the
reference, wrapped samples begin with EOS, which is unscored, so in practice every EOS
target of the text itself is excluded there too.

The evaluator is a hub id (default ``gpt2-large``, the paper-scale choice) or a local
directory saved with ``save_pretrained``. A hub id is first looked up in the local cache;
when it is absent and the run is offline (``RunContext.offline``)
:class:`dlmbench.errors.HubUnavailableError` is raised at once, without network access;
online, one short probe request replaces the downloader's minutes of retries when the
hub cannot be reached.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import torch
from pydantic import Field, model_validator

from dlmbench.data import Generation
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.hub_needs import HUB_ID
from dlmbench.metric import Metric, MetricConfig, MetricValue
from dlmbench.metrics.proxy import PROXY, PROXY_NOTE, resolve_evaluator
from dlmbench.safe_weights import from_pretrained_safetensors
from dlmbench.task import TaskData

_TOKENIZERS: dict[str, Any] = {}
_MODELS: dict[tuple[str, str], Any] = {}


# --- loading the evaluator -------------------------------------------------------------
def _load(loader: Any, name: str, what: str, offline: bool) -> Any:
    """The evaluator's ``what`` from a local path, the cache, then (online) the hub.
    Model weights load as safetensors only (:mod:`dlmbench.safe_weights`)."""

    def load(source: str, **kwargs: Any) -> Any:
        if what == "model":
            return from_pretrained_safetensors(loader, source, f"evaluator={name!r}:", **kwargs)
        return loader.from_pretrained(source, **kwargs)  # a tokenizer: its files hold no weights

    path = Path(name).expanduser()
    if path.exists():
        return load(str(path))
    if not HUB_ID.fullmatch(name):  # looks like a path, not "name" or "org/name"
        raise ConfigError(f"evaluator={name!r}: no such directory")
    try:
        return load(name, local_files_only=True)
    except (OSError, ValueError) as cached_error:
        if offline:
            raise HubUnavailableError(
                f"gen-ppl evaluator {name!r} ({what}) is not in the local cache and the Hugging "
                "Face Hub is offline; download it once with `huggingface-cli download "
                f"{name}`, or pass evaluator=/path/to/a/saved/model"
            ) from cached_error
    _probe_hub(name)  # one short request instead of minutes of download retries
    try:
        return load(name)
    except OSError as error:  # the hub answered the probe: a wrong, gated or partial repo
        raise ConfigError(f"evaluator={name!r}: cannot load its {what} from the hub: {error}") from error


def _probe_hub(name: str, timeout: float = 10.0) -> None:
    """Raise :class:`HubUnavailableError` at once when the hub cannot be reached."""
    from huggingface_hub import model_info

    try:
        model_info(name, timeout=timeout)
    except Exception as error:  # noqa: BLE001 - classify below
        try:
            from huggingface_hub.errors import HfHubHTTPError
        except ImportError:  # pragma: no cover - older huggingface_hub
            from huggingface_hub.utils import HfHubHTTPError
        if isinstance(error, HfHubHTTPError):
            return  # the hub answered (e.g. gated or missing): let from_pretrained explain
        raise HubUnavailableError(
            f"gen-ppl evaluator {name!r} is not cached and the Hugging Face Hub cannot be "
            f"reached ({error}); pass evaluator=/path/to/a/saved/model"
        ) from error


def load_tokenizer(name: str, offline: bool = True) -> Any:
    """The evaluator's tokenizer (cached per process); ``offline``: never contact the hub."""
    if name not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[name] = _load(AutoTokenizer, name, "tokenizer", offline)
    return _TOKENIZERS[name]


def load_model(name: str, device: str, offline: bool = True, dtype: torch.dtype = torch.float32) -> Any:
    """The evaluator LM in ``dtype``, eval mode, on ``device`` (cached per process)."""
    key = (name, device, dtype)
    if key not in _MODELS:
        from transformers import AutoModelForCausalLM

        model = _load(AutoModelForCausalLM, name, "model", offline)
        _MODELS[key] = model.to(device=device, dtype=dtype).eval()
    return _MODELS[key]


def evaluator_context(model: Any) -> int:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ConfigError("gen-ppl: cannot read the evaluator context; set context=")


def retokenize(tokenizer: Any, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
    """Evaluator ids of each text: no special tokens added, truncated to ``max_length``."""
    if not texts:
        return []
    enc = tokenizer(
        list(texts),
        add_special_tokens=False,
        truncation=max_length is not None,
        max_length=max_length,
    )
    return [list(ids) for ids in enc["input_ids"]]


# --- scoring ---------------------------------------------------------------------------
def target_weights(
    ids: torch.Tensor, real: torch.Tensor, eos_id: int | None, rule: str, eos_weights: str = "or"
) -> torch.Tensor:
    """Int ``(B, T-1)``: how often each target ``ids[:, 1:]`` of a chunk is counted.

    ``real`` marks the positions that may be scored (not padding). ``first-eos`` keeps
    non-EOS targets plus the first EOS of the chunk (counted from position 0), ``none``
    only non-EOS targets, ``all`` every target: each once. ``eos_weights="sum"`` is ELF's
    ``[not EOS] + [exactly one EOS so far]``, which is 2 for the non-EOS targets between
    a chunk's first and second EOS (lillian039/ELF@b29d883 ``src/utils/metrics_utils.py``
    L150-153).
    """
    scored = real[:, 1:].long()
    if rule == "all" or eos_id is None:
        return scored
    is_eos = (ids == eos_id) & real
    one_so_far = is_eos.cumsum(-1) == 1
    if rule == "first-eos" and eos_weights == "sum":
        return scored * ((~is_eos).long() + one_so_far.long())[:, 1:]
    keep = ~is_eos
    if rule == "first-eos":
        keep = keep | (is_eos & one_so_far)
    elif rule != "none":
        raise ConfigError(f"eos_rule={rule!r} is not 'first-eos', 'all' or 'none'")
    return scored * keep[:, 1:].long()


@torch.no_grad()
def score_chunks(
    model: Any,
    rows: Sequence[Sequence[int]],
    *,
    context: int,
    batch_size: int,
    eos_id: int | None,
    eos_rule: str,
    device: str | torch.device = "cpu",
    padding: str = "unscored",
    call_size: int | None = None,
    remainder: str = "keep",
    eos_weights: str = "or",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed NLL (nats) and scored-target weight per row, both float64 ``(N,)``, and
    which rows were scored (bool ``(N,)``; False for a dropped remainder).

    Rows are scored in calls of ``call_size`` (None: all rows), each as the reference
    scorer takes one: in batches of ``batch_size``, ``remainder="drop"`` keeping only its
    whole batches of ``min(batch_size, call)``; ``padding="reference"`` pads every row
    of the call with EOS to the call's longest row and lets ``eos_rule`` score that
    padding like text. See the module docstring for the upstream lines.
    """
    n = len(rows)
    nll_sum = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    kept = torch.ones(n, dtype=torch.bool)
    pad = eos_id if eos_id is not None else 0
    step = call_size or max(n, 1)
    for g0 in range(0, n, step):
        call = range(g0, min(g0 + step, n))
        if remainder == "drop":
            whole = min(batch_size, len(call))
            kept[g0 + len(call) // whole * whole : call.stop] = False
        call_width = max(len(rows[i]) for i in call)
        for b0 in range(g0, call.stop, batch_size):
            where = torch.arange(b0, min(b0 + batch_size, call.stop))
            where = where[kept[where]]
            batch = [rows[i] for i in where.tolist()]
            width = call_width if padding == "reference" else max((len(r) for r in batch), default=0)
            if width < 2:
                continue
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            real = torch.zeros((len(batch), width), dtype=torch.bool)
            for i, r in enumerate(batch):
                ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
                real[i, : len(r)] = True
            for c0 in range(0, width, context):  # each chunk is scored on its own
                x, m = ids[:, c0 : c0 + context], real[:, c0 : c0 + context]
                scorable = torch.ones_like(m) if padding == "reference" else m  # reference: padding is text
                w = target_weights(x, scorable, eos_id, eos_rule, eos_weights)
                live = (m.sum(1) >= 2) | (w > 0).any(1)  # rows with at least one target in this chunk
                if not live.any():
                    continue
                x, m, w = x[live], m[live], w[live]
                logits = model(input_ids=x.to(device), attention_mask=m.long().to(device)).logits
                logp = logits[:, :-1].float().log_softmax(-1)  # (b, T-1, V): predicts ids[:, 1:]
                nll = -logp.gather(-1, x[:, 1:, None].to(device))[..., 0].double().cpu()
                nll_sum[where[live]] += torch.where(w > 0, nll * w, 0.0).sum(1)
                count[where[live]] += w.sum(1).double()
    return nll_sum, count, kept


class GenPPLConfig(MetricConfig):
    evaluator: str = Field(
        "gpt2-large", description="evaluator causal LM: hub id, local path, or 'proxy' (trained locally, offline)"
    )
    context: int | None = Field(None, description="chunk length; None: the evaluator's context")
    max_length: int | Literal["model"] | None = Field(
        None, description="re-tokenization truncation; None: context; 'model': the task's continuation length"
    )
    batch_size: int = Field(8, gt=0, description="rows scored per evaluator call (reference: 8)")
    eos_rule: Literal["first-eos", "all", "none"] = "first-eos"
    pooling: Literal["corpus", "per-sample"] = "corpus"
    device: str = Field("auto", description="'auto': cuda when available, else cpu")
    padding: Literal["unscored", "reference"] = Field(
        "unscored", description="'reference': EOS-padded calls whose first padding EOS is scored (MDLM/Duo/ELF)"
    )
    call_size: int | None = Field(
        None, gt=0, description="samples per reference call (padding, remainder); None: all (ELF); MDLM/Duo: "
        "the sampling batch"
    )
    remainder: Literal["keep", "drop"] = Field(
        "keep", description="'drop': each call scores only whole batches (MDLM/Duo)"
    )
    eos_weights: Literal["or", "sum"] = Field(
        "or", description="'sum': ELF's summed EOS indicators, a target after the first EOS counts twice"
    )
    precision: Literal["fp32", "bf16"] = Field("fp32", description="evaluator dtype (ELF: bf16)")
    skip_empty: bool = Field(False, description="drop blank texts before scoring (ELF)")

    added: ClassVar[tuple[str, ...]] = (
        "padding", "call_size", "remainder", "eos_weights", "precision", "skip_empty",
    )

    @model_validator(mode="after")
    def _sum_needs_first_eos(self) -> "GenPPLConfig":
        if self.eos_weights == "sum" and self.eos_rule != "first-eos":
            raise ValueError(f"eos_weights='sum' is ELF's first-eos weighting; it needs eos_rule='first-eos', "
                             f"not {self.eos_rule!r}")
        return self


class GenPPL(Metric):
    name = "gen-ppl"
    higher_is_better = False
    description = (
        "Generative perplexity of the decoded samples under an evaluator LM (default "
        "gpt2-large), MDLM/Duo protocol: re-tokenized, chunked by the evaluator context, "
        "first token unscored, EOS targets after the first excluded, pooled over all "
        "tokens. Read it next to unigram-entropy: low-diversity samples get low Gen PPL."
    )
    Config = GenPPLConfig

    def compute(self, generation: Generation, task: TaskData) -> MetricValue:
        cfg = self.config
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        evaluator = resolve_evaluator(cfg.evaluator, self.evaluator_task(task), self.context)  # 'proxy': trained locally, labelled
        tokenizer = load_tokenizer(evaluator, self.context.offline)
        dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        model = load_model(evaluator, device, self.context.offline, dtype)
        context = cfg.context or evaluator_context(model)
        if cfg.max_length == "model":
            max_length = task.spec.seq_len - task.spec.prefix_len
        else:
            max_length = cfg.max_length or context
        texts = [t for t in generation.texts if t.strip()] if cfg.skip_empty else list(generation.texts)
        rows = retokenize(tokenizer, texts, max_length)
        nll, count, kept = score_chunks(
            model, rows, context=context, batch_size=cfg.batch_size,
            eos_id=tokenizer.eos_token_id, eos_rule=cfg.eos_rule, device=device,
            padding=cfg.padding, call_size=cfg.call_size, remainder=cfg.remainder, eos_weights=cfg.eos_weights,
        )
        total_nll, total = float(nll.sum()), float(count.sum())
        corpus = math.exp(total_nll / total) if total > 0 else float("nan")
        details = {
            "evaluator": cfg.evaluator,
            **({"evaluator_path": evaluator, "proxy_note": PROXY_NOTE} if cfg.evaluator == PROXY else {}),
            "eos_rule": cfg.eos_rule,
            "pooling": cfg.pooling,
            "context": context,
            "max_length": max_length,
            "padding": cfg.padding,
            "call_size": cfg.call_size,
            "remainder": cfg.remainder,
            "eos_weights": cfg.eos_weights,
            "precision": cfg.precision,
            "skip_empty": cfg.skip_empty,
            "tokens": int(total),
            "nll_sum": total_nll,
            "corpus_ppl": corpus,
            "samples": len(generation.texts),
            "skipped_empty": len(generation.texts) - len(texts),
            "dropped": int((~kept).sum()),
            "unscored_samples": int((kept & (count == 0)).sum()),
        }
        if cfg.pooling == "corpus":
            return MetricValue(corpus, None, details, n=int(kept.sum()) - details["unscored_samples"])
        per_sample = [math.exp(a / c) for a, c in zip(nll.tolist(), count.tolist()) if c > 0]
        return MetricValue.mean_of(per_sample, **details)
