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

Two deliberate differences from the reference code, both batch-invariance fixes: rows
are padded to the longest in their batch, and padding is never scored (the reference
pads with EOS and scores the first padding EOS of shorter rows, so its number depends on
how samples are batched). And dlmbench's ``Generation.texts`` are cut before the model's
first EOS with special tokens dropped, so an evaluator EOS appears only where the text
spells it out; in the reference, wrapped samples begin with EOS, which is unscored, so
in practice every EOS target is excluded there too.

The evaluator is a hub id (default ``gpt2-large``, the paper-scale choice) or a local
directory saved with ``save_pretrained``. A hub id is first looked up in the local cache;
when it is absent and the run is offline (``RunContext.offline``)
:class:`dlmbench.errors.HubUnavailableError` is raised at once, without network access;
online, one short probe request replaces the downloader's minutes of retries when the
hub cannot be reached.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import Field

from dlmbench.data import Generation
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.metric import Metric, MetricConfig, MetricValue
from dlmbench.metrics.proxy import PROXY, PROXY_NOTE, resolve_evaluator
from dlmbench.safe_weights import from_pretrained_safetensors
from dlmbench.task import TaskData

_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[\w.-]+)?")
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
    if not _HUB_ID.fullmatch(name):  # looks like a path, not "name" or "org/name"
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


def load_model(name: str, device: str, offline: bool = True) -> Any:
    """The evaluator LM in float32, eval mode, on ``device`` (cached per process)."""
    key = (name, device)
    if key not in _MODELS:
        from transformers import AutoModelForCausalLM

        model = _load(AutoModelForCausalLM, name, "model", offline)
        _MODELS[key] = model.to(device=device, dtype=torch.float32).eval()
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
def target_weights(ids: torch.Tensor, real: torch.Tensor, eos_id: int | None, rule: str) -> torch.Tensor:
    """Bool ``(B, T-1)``: which targets ``ids[:, 1:]`` of a chunk are scored.

    ``real`` marks non-padding positions. ``first-eos`` keeps non-EOS targets plus the
    first EOS of the chunk (counted from position 0), ``none`` only non-EOS targets,
    ``all`` every target.
    """
    scored = real[:, 1:]
    if rule == "all" or eos_id is None:
        return scored
    is_eos = (ids == eos_id) & real
    keep = ~is_eos
    if rule == "first-eos":
        keep = keep | (is_eos & (is_eos.cumsum(-1) == 1))
    elif rule != "none":
        raise ConfigError(f"eos_rule={rule!r} is not 'first-eos', 'all' or 'none'")
    return scored & keep[:, 1:]


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL (nats) and scored-target count per row, both float64 ``(N,)``."""
    n = len(rows)
    nll_sum = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    pad = eos_id if eos_id is not None else 0
    for b0 in range(0, n, batch_size):
        batch = rows[b0 : b0 + batch_size]
        width = max((len(r) for r in batch), default=0)
        if width < 2:
            continue
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        real = torch.zeros((len(batch), width), dtype=torch.bool)
        for i, r in enumerate(batch):
            ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            real[i, : len(r)] = True
        for c0 in range(0, width, context):  # each chunk is scored on its own
            x, m = ids[:, c0 : c0 + context], real[:, c0 : c0 + context]
            live = m.sum(1) >= 2  # rows with at least one target in this chunk
            if not live.any():
                continue
            x, m = x[live], m[live]
            logits = model(input_ids=x.to(device), attention_mask=m.long().to(device)).logits
            logp = logits[:, :-1].float().log_softmax(-1)  # (b, T-1, V): predicts ids[:, 1:]
            nll = -logp.gather(-1, x[:, 1:, None].to(device))[..., 0].double().cpu()
            w = target_weights(x, m, eos_id, eos_rule)
            where = torch.arange(b0, b0 + len(batch))[live]
            nll_sum[where] += torch.where(w, nll, 0.0).sum(1)
            count[where] += w.sum(1).double()
    return nll_sum, count


class GenPPLConfig(MetricConfig):
    evaluator: str = Field(
        "gpt2-large", description="evaluator causal LM: hub id, local path, or 'proxy' (trained locally, offline)"
    )
    context: int | None = Field(None, description="chunk length; None: the evaluator's context")
    max_length: int | None = Field(None, description="re-tokenization truncation; None: context")
    batch_size: int = Field(8, gt=0, description="rows scored per evaluator call (reference: 8)")
    eos_rule: Literal["first-eos", "all", "none"] = "first-eos"
    pooling: Literal["corpus", "per-sample"] = "corpus"
    device: str = Field("auto", description="'auto': cuda when available, else cpu")


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
        evaluator = resolve_evaluator(cfg.evaluator, task, self.context)  # 'proxy': trained locally, labelled
        tokenizer = load_tokenizer(evaluator, self.context.offline)
        model = load_model(evaluator, device, self.context.offline)
        context = cfg.context or evaluator_context(model)
        max_length = cfg.max_length or context
        rows = retokenize(tokenizer, generation.texts, max_length)
        nll, count = score_chunks(
            model, rows, context=context, batch_size=cfg.batch_size,
            eos_id=tokenizer.eos_token_id, eos_rule=cfg.eos_rule, device=device,
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
            "tokens": int(total),
            "nll_sum": total_nll,
            "corpus_ppl": corpus,
            "samples": len(rows),
            "unscored_samples": int((count == 0).sum()),
        }
        if cfg.pooling == "corpus":
            return MetricValue(corpus, None, details, n=len(rows) - details["unscored_samples"])
        per_sample = [math.exp(a / c) for a, c in zip(nll.tolist(), count.tolist()) if c > 0]
        return MetricValue.mean_of(per_sample, **details)
