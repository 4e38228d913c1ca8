"""Loading the released ELF weights (Hugging Face ``embedded-language-flows/ELF-*-torch``).

The released files are the authors' PyTorch port's training state
(``lillian039/ELF@b29d883``, branch ``pytorch_elf``: ``save_checkpoint`` in
``src/utils/checkpoint_utils.py``): one file ``checkpoint_<step>`` per repository, a
``torch.save`` of ``{params, ema_params1, opt_state, lr_scheduler, step, epoch,
dropout_rng, grad_accum_buffers}``. Evaluation uses ``ema_params1`` (``_build_eval_model``
in ``src/generation.py``), and so does :func:`load_official`. The T5 encoder is not in it:
it is Hugging Face ``t5-small``, loaded separately (``encoder_name``).

Reading. Only ``torch.load(..., weights_only=True)`` is used, never a full unpickle: a
training state of tensors, dicts, lists, numbers, strings and a generator state is within
what ``weights_only`` accepts by default, so :data:`SAFE_GLOBALS` (the extra types
allowed) is empty and any other type is refused with :class:`CheckpointError`. The file is
memory-mapped, so of a released state (weights, EMA and optimiser moments) only the EMA
tensors are read.

Mapping onto :class:`~dlmbench_elf.denoiser.Denoiser` (our name <- official name):

- ``time_tokens`` <- ``t_emb_tokens``
- ``scale_tokens``, ``w_embedder.*`` <- ``self_cond_cfg_tokens``, ``self_cond_cfg_embedder.*``
- ``bottleneck.weight`` <- ``text_proj.proj1.weight`` (the 128-d bottleneck)
- ``in_proj.*`` <- ``text_proj.proj2.*``
- ``final_norm.*``, ``x_head.*`` <- ``final_layer.norm_final.*``, ``final_layer.linear.*``
- ``decode_head.proj.weight`` <- ``proj_kernel`` transposed (stored ``(H, D)``, used as ``x @ W``)
- ``decode_head.unembed.weight`` <- ``unembed_kernel`` transposed (stored ``(D, |V|)``)
- ``decode_head.proj.bias``, ``decode_head.unembed.bias`` <- ``proj_bias``, ``unembed_bias``
- every other name is the same on both sides (``blocks.*``, ``t_embedder.*``,
  ``self_cond_proj.*``, ``mode_tokens``); our ``rotary.inv_freq`` is computed, not loaded.

The official RoPE rotates interleaved channel pairs ``(2i, 2i+1)``; ours rotates
``(i, i + hd/2)`` (:mod:`dlmbench.nn.rotary`). Both give pair ``i`` the frequency
``base^(-2i/hd)``, so reordering each head's q and k channels as "even channels, then
odd" makes the two the same function: the q and k rows of every ``qkv`` weight and bias
and the ``q_norm`` / ``k_norm`` weights are permuted; v is not, and q.k is unchanged.

Every tensor's shape is checked against the preset the checkpoint claims (detected from
its shapes, or ``preset=``) before anything is copied; unknown, missing and mis-shaped
keys are listed by their official names. The converted weights (our names, already
permuted and transposed) are written once to ``<cache>/released/<name>.safetensors``, and
later loads read that file instead of the training state.

Checked against golden outputs of the upstream code (``tests/fixtures/golden/elf``):
forward pass, training loss under recorded draws and SDE / ODE samples agree to fp32
precision (the decode head's GELU is tanh-approximated on both sides; with the exact one
decode logits differed by up to ~5e-4).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dlmbench.atomic import FILE_MODE, temp_file
from dlmbench.data import DataSpec
from dlmbench.environment import hub_offline
from dlmbench.errors import CheckpointError, HubUnavailableError
from dlmbench.released import ReleasedWeights
from dlmbench_elf.config import ELFConfig

if TYPE_CHECKING:  # imported when loading, so that model.py may import this module
    from dlmbench_elf.model import ELF

UPSTREAM = "lillian039/ELF@b29d8833609e9ab7f67cd9da39435ac5cea04837 (branch pytorch_elf)"
#: ``len(tokenizer)`` of the T5 tokenizer: the decode head's rows (the T5 embedding has 32,128).
T5_VOCAB = 32_100
#: Top-level keys of upstream's ``save_checkpoint``.
STATE_KEYS = ("params", "ema_params1", "opt_state", "lr_scheduler", "step", "epoch", "dropout_rng",
              "grad_accum_buffers")
WEIGHT_SETS = ("ema_params1", "params")
#: Types allowed beyond ``weights_only``'s defaults (none are needed; see the module docstring).
SAFE_GLOBALS: tuple[Any, ...] = ()
#: Stamped into every converted file; bump it when the conversion changes, and older files
#: are converted again (a file of another format is treated as absent).
CACHE_FORMAT = "dlmbench-elf-official/1"

_OWT = "train_owt_ELF-{}.yml"
#: The released variants. ``tokens``: training tokens as stated for ELF-B-owt (paper, as
#: cited in the issue; not re-derived here); the others are derived from the epochs of
#: the configs (ELF-M 4 and ELF-L 3 of ELF-B's 5 OWT epochs). ``sampler``: the setting the
#: reported numbers use (``src/configs/sampling_configs/*.yml``; the PD branch's
#: ``uncond_fewstep_sampling_configs.yml``). ``seq_len`` / ``prefix_len``: the configs'
#: ``max_length`` / ``max_input_length``. ``options``: ELFConfig fields the weights need,
#: under any given to :func:`load_official`: the conditional models were trained on packed
#: ``[source | target | EOS padding]`` rows with a variable source length, so they read
#: dlmbench's fixed rows through ``source_layout: packed`` (:mod:`dlmbench_elf.layout`).
RELEASED: dict[str, dict[str, Any]] = {
    "ELF-B-owt": {
        "hub": "embedded-language-flows/ELF-B-owt-torch", "preset": "B", "task": "openwebtext",
        "seq_len": 1024, "prefix_len": 0, "distilled": False, "epochs": 5,
        "trained_on": "about 45.2B T5 tokens of OpenWebText (5 epochs)", "config": _OWT.format("B"),
        "sampler": {"name": "sde", "steps": 32, "gamma": 1.5, "w": 3.0},
        "reported": {"gen_ppl": 24.1, "entropy": 5.15},
    },
    "ELF-M-owt": {
        "hub": "embedded-language-flows/ELF-M-owt-torch", "preset": "M", "task": "openwebtext",
        "seq_len": 1024, "prefix_len": 0, "distilled": False, "epochs": 4,
        "trained_on": "OpenWebText, 4 epochs (about 36.2B T5 tokens at ELF-B's 9.04B per epoch)",
        "config": _OWT.format("M"),
        "sampler": {"name": "sde", "steps": 64, "gamma": 1.0, "w": 3.0},
        "reported": {"gen_ppl": 21.7, "entropy": 5.18},
    },
    "ELF-L-owt": {
        "hub": "embedded-language-flows/ELF-L-owt-torch", "preset": "L", "task": "openwebtext",
        "seq_len": 1024, "prefix_len": 0, "distilled": False, "epochs": 3,
        "trained_on": "OpenWebText, 3 epochs (about 27.1B T5 tokens at ELF-B's 9.04B per epoch)",
        "config": _OWT.format("L"),
        "sampler": {"name": "sde", "steps": 64, "gamma": 1.0, "w": 3.0},
        "reported": {"gen_ppl": 23.3, "entropy": 5.28},
    },
    "ELF-B-de-en": {
        "hub": "embedded-language-flows/ELF-B-de-en-torch", "preset": "B", "task": "wmt14-de-en",
        "seq_len": 128, "prefix_len": 64, "distilled": False, "epochs": 100,
        "trained_on": "WMT14 De-En (the config's 100 epochs at 128 tokens)",
        "config": "train_de-en_ELF-B.yml", "options": {"source_layout": "packed"},
        "sampler": {"name": "ode", "steps": 64, "w": 1.0, "cfg_scale": 2.0},
        "reported": {"bleu": 26.4},
    },
    "ELF-B-xsum": {
        "hub": "embedded-language-flows/ELF-B-xsum-torch", "preset": "B", "task": "xsum",
        "seq_len": 1088, "prefix_len": 1024, "distilled": False, "epochs": 100,
        "trained_on": "XSum (the config's 100 epochs at 1,088 tokens)",
        "config": "train_xsum_ELF-B.yml", "options": {"source_layout": "packed"},
        "sampler": {"name": "ode", "steps": 64, "w": 1.0, "cfg_scale": 2.0},
        "reported": {"rouge1": 36.0, "rouge2": 12.2, "rougeL": 27.8},
    },
    "ELF-B-PD-owt": {
        "hub": "embedded-language-flows/ELF-B-PD-owt-torch", "preset": "B", "task": "openwebtext",
        "seq_len": 1024, "prefix_len": 0, "distilled": True, "epochs": 5,
        "trained_on": "ELF-B-owt distilled: 5 progressive-distillation rounds (16, 8, 4, 2, 1 steps) of one "
                      "OpenWebText epoch each",
        "config": "distill_curriculum_ELF-B.yml", "code": "346f00b (branch distillation)",
        # 1-8 steps: gamma 1.5, w 2.5; 16 and 32 steps: gamma 2, w 2
        "sampler": {"name": "sde", "steps": 8, "gamma": 1.5, "w": 2.5},
        "reported": {"gen_ppl": {1: 136.10, 2: 68.25, 4: 34.33, 8: 23.18, 16: 22.12, 32: 21.32}},
    },
}
_BY_HUB = {v["hub"]: k for k, v in RELEASED.items()}
_PAPER = "Hu et al. 2026 (arXiv 2605.10938); lillian039/ELF@{} README and src/configs/training_configs/{}"
#: :data:`RELEASED` as :class:`dlmbench.released.ReleasedWeights`, for ``ELF.released_weights``.
RELEASED_WEIGHTS: dict[str, ReleasedWeights] = {
    name: ReleasedWeights(hub=info["hub"], trained_on=info["trained_on"], distilled=info["distilled"],
                          reference=_PAPER.format(info.get("code", "b29d883"), info["config"]))
    for name, info in RELEASED.items()
}

# (our name prefix, official name prefix); a name in neither column is the same on both sides
_RENAMES = (
    ("time_tokens", "t_emb_tokens"),
    ("scale_tokens", "self_cond_cfg_tokens"),
    ("w_embedder.", "self_cond_cfg_embedder."),
    ("bottleneck.", "text_proj.proj1."),
    ("in_proj.", "text_proj.proj2."),
    ("final_norm.", "final_layer.norm_final."),
    ("x_head.", "final_layer.linear."),
    ("decode_head.proj.weight", "proj_kernel"),
    ("decode_head.proj.bias", "proj_bias"),
    ("decode_head.unembed.weight", "unembed_kernel"),
    ("decode_head.unembed.bias", "unembed_bias"),
)
_TRANSPOSED = ("decode_head.proj.weight", "decode_head.unembed.weight")
_COMPUTED = ("rotary.inv_freq",)  # our buffers that the official state has no counterpart of


def _rename(key: str, pairs) -> str:
    for src, dst in pairs:
        if key == src or (src.endswith(".") and key.startswith(src)):
            return dst + key[len(src):]
    return key


def official_name(ours: str) -> str:
    """The official parameter name of our denoiser's ``ours``."""
    return _rename(ours, _RENAMES)


def our_name(official: str) -> str:
    """Our denoiser's name for the official parameter ``official``."""
    return _rename(official, [(b, a) for a, b in _RENAMES])


def rope_permutation(head_dim: int) -> Tensor:
    """Interleaved -> rotate-half channel order of one head: even channels, then odd."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _permute_qk_rows(t: Tensor, heads: int, perm: Tensor) -> Tensor:
    """Reorder the q and k rows of a fused ``qkv`` weight ``(3H, H)`` or bias ``(3H,)`` per head."""
    hd = t.shape[0] // 3 // heads
    rows = t.reshape(3, heads, hd, *t.shape[1:])
    out = rows.clone()
    out[:2] = rows[:2, :, perm]
    return out.reshape(t.shape)


def _convert(key: str, t: Tensor, heads: int, inverse: bool) -> Tensor:
    """One tensor between the layouts; ``key`` is our name."""
    if key in _TRANSPOSED:
        return t.t().contiguous()
    if key.endswith(("attn.qkv.weight", "attn.qkv.bias", "attn.q_norm.weight", "attn.k_norm.weight")):
        hd = (t.shape[0] // 3 // heads) if ".qkv." in key else t.shape[0]
        perm = rope_permutation(hd)
        if inverse:
            perm = torch.argsort(perm)
        return _permute_qk_rows(t, heads, perm) if ".qkv." in key else t[perm].contiguous()
    return t


def from_official(state: Mapping[str, Tensor], heads: int) -> dict[str, Tensor]:
    """Official names and layout -> our denoiser's (names mapped, q/k permuted, kernels transposed)."""
    out = {}
    for name, t in state.items():
        key = our_name(name)
        out[key] = _convert(key, t, heads, inverse=False)
    return out


def to_official(state: Mapping[str, Tensor], heads: int) -> dict[str, Tensor]:
    """The inverse of :func:`from_official` (our computed buffers are dropped)."""
    return {official_name(k): _convert(k, t, heads, inverse=True) for k, t in state.items() if k not in _COMPUTED}


def official_shapes(denoiser: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The official name and shape of every tensor ``denoiser`` expects from a checkpoint."""
    shapes = {}
    for key, t in denoiser.state_dict().items():
        if key in _COMPUTED:
            continue
        shape = tuple(t.shape)
        shapes[official_name(key)] = shape[::-1] if key in _TRANSPOSED else shape
    return shapes


# --- reading the training state -------------------------------------------------------
def read_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, map_location="cpu", weights_only=True)`` (memory-mapped when the file
    is a zip archive), with every failure turned into a :class:`CheckpointError`."""
    path = Path(path)
    mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"{str(path)!r}: refused to unpickle it: it needs {found.group(1)}, which is not a tensor "
                "or plain container; dlmbench reads ELF checkpoints with torch.load(weights_only=True) only "
                "and never runs a full unpickle (an ELF training state holds tensors, dicts, lists and numbers)"
            ) from None
        why = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc)) or re.search(r"(.+)", str(exc))
        raise CheckpointError(f"{str(path)!r} is not a readable torch.save file of tensors and plain containers "
                              f"(torch.load(weights_only=True): {why.group(1).strip() if why else exc})") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable torch.save file "
                              f"({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(state).__name__}, not the dict of an ELF "
                              f"training state (keys {list(STATE_KEYS)})")
    return state


def weight_set(state: Mapping[str, Any], weights: str, where: str) -> dict[str, Tensor]:
    """``state[weights]`` (a name -> tensor dict), or a :class:`CheckpointError` saying what is wrong."""
    if weights not in WEIGHT_SETS:
        raise ValueError(f"weights={weights!r} must be one of {WEIGHT_SETS}")
    if weights not in state:
        have = sorted(map(str, state))
        hint = " (pass weights='params' to load the raw weights)" if weights == "ema_params1" and "params" in state else ""
        raise CheckpointError(f"{where}: the ELF training state has no {weights!r} (keys {have}); evaluation "
                              f"uses the EMA weights ema_params1{hint}")
    params = state[weights]
    if not isinstance(params, Mapping):
        raise CheckpointError(f"{where}: {weights} is a {type(params).__name__}, not a name -> tensor dict")
    bad = sorted(str(k) for k, v in params.items() if not isinstance(k, str) or not isinstance(v, Tensor))
    if bad:
        raise CheckpointError(f"{where}: {weights} has entries that are not tensors: {bad}")
    return dict(params)


def official_architecture(state: Mapping[str, Tensor]) -> dict[str, int]:
    """The sizes an official state's shapes show (those whose tensors are absent are left out)."""
    arch: dict[str, int] = {}

    def shape(name: str, dims: int) -> tuple[int, ...] | None:
        t = state.get(name)
        return tuple(t.shape) if isinstance(t, Tensor) and t.dim() == dims else None

    if s := shape("t_emb_tokens", 3):
        arch["hidden"], arch["num_time_tokens"] = s[2], s[1]
    if s := shape("self_cond_cfg_tokens", 3):
        arch["num_scale_tokens"] = s[1]
    if s := shape("mode_tokens", 3):
        arch["num_mode_tokens"] = s[1]
    blocks = [int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))]
    if blocks:
        arch["depth"] = max(blocks) + 1
    if (s := shape("blocks.0.attn.q_norm.weight", 1)) and "hidden" in arch and s[0] and arch["hidden"] % s[0] == 0:
        arch["heads"] = arch["hidden"] // s[0]
    if s := shape("self_cond_proj.weight", 2):
        arch["d_latent"] = s[0]
    if s := shape("text_proj.proj1.weight", 2):
        arch["bottleneck_dim"] = s[0]
    if s := shape("unembed_bias", 1):
        arch["vocab_size"] = s[0]
    if s := shape("blocks.0.mlp.w3.weight", 2):
        arch["mlp_hidden"] = s[1]
    if s := shape("t_embedder.mlp_0.weight", 2):
        arch["freq_dim"] = s[1]
    return arch


def detect_preset(arch: Mapping[str, int]) -> str | None:
    """The released size (``B``, ``M``, ``L``) whose depth, width and heads ``arch`` has."""
    for name in ("B", "M", "L"):
        p = ELFConfig.presets[name]
        if all(arch.get(k) == p[k] for k in ("depth", "hidden", "heads")):
            return name
    return None


def check_official_state(state: Mapping[str, Tensor], denoiser: torch.nn.Module, what: str) -> None:
    """Raise :class:`CheckpointError` listing unknown, missing and mis-shaped keys (official names)."""
    expected = official_shapes(denoiser)
    unknown = sorted(k for k in state if k not in expected)
    missing = sorted(k for k in expected if k not in state)
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs {expected[k]}"
             for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    wrong += [f"{k}: dtype {state[k].dtype} is not floating" for k in expected
              if k in state and not state[k].is_floating_point()]
    problems = []
    if unknown:
        problems.append(f"unknown keys {unknown}")
    if missing:
        problems.append(f"missing keys {missing}")
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong))
    if problems:
        raise CheckpointError(f"the ELF checkpoint does not match {what}: " + ", ".join(problems))


def _check_ours(state: Mapping[str, Tensor], denoiser: torch.nn.Module, what: str) -> None:
    """:func:`check_official_state` for weights already in our names (a cache file)."""
    expected = {k: tuple(v.shape) for k, v in denoiser.state_dict().items() if k not in _COMPUTED}
    bad = sorted(set(state) ^ set(expected)) + sorted(
        k for k in expected if k in state and tuple(state[k].shape) != expected[k])
    if bad:
        raise CheckpointError(f"the cached ELF weights do not match {what}: keys {bad} differ; delete the "
                              "cache file to convert the checkpoint again")


# --- where a source lives -------------------------------------------------------------
def _latest_checkpoint(directory: Path) -> Path:
    """Upstream's rule (``find_latest_checkpoint``): the ``checkpoint_*`` file with the largest trailing step."""
    found = [p for p in directory.iterdir() if p.name.startswith("checkpoint_") and p.is_file()]
    if not found:
        names = sorted(p.name for p in directory.iterdir())[:10]
        raise CheckpointError(f"directory {str(directory)!r} has no checkpoint_<step> file (it holds {names})")

    def step(p: Path) -> int:
        m = re.search(r"(\d+)$", p.name)
        return int(m.group(1)) if m else -1

    return max(found, key=step)


def _hub_error(hub_id: str, why: str) -> HubUnavailableError:
    return HubUnavailableError(
        f"cannot fetch the ELF checkpoint {hub_id!r} from the Hugging Face Hub: {why}. Download it once "
        f"while online with `hf download {hub_id} --local-dir DIR` and pass DIR (or the checkpoint_<step> "
        "file in it) as the source"
    )


def _from_hub(hub_id: str) -> Path:
    try:
        import huggingface_hub
    except ImportError:
        raise _hub_error(hub_id, "huggingface_hub is not installed") from None
    patterns = ["checkpoint_*"]
    try:  # the local Hugging Face cache first: instant, and works offline
        local = Path(huggingface_hub.snapshot_download(hub_id, allow_patterns=patterns, local_files_only=True))
        return _latest_checkpoint(local)
    except Exception:  # noqa: BLE001 - not cached (the exception type varies by version)
        pass
    if hub_offline():
        raise _hub_error(hub_id, "the hub is switched off (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE or "
                                 "HF_DATASETS_OFFLINE) and it is not in the local Hugging Face cache")
    try:
        local = Path(huggingface_hub.snapshot_download(hub_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - network, auth or missing-repo errors
        raise _hub_error(hub_id, f"{type(exc).__name__}: {exc}") from None
    return _latest_checkpoint(local)


def _released_name(source: str) -> str | None:
    if source in RELEASED:
        return source
    return _BY_HUB.get(source)


def _local_name(path: Path) -> str:
    """A cache name for a local file: its name plus a digest of where it is, its size and mtime."""
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{path.name}-{digest}"


def t5_spec(seq_len: int = 1024, prefix_len: int = 0, vocab_size: int = T5_VOCAB) -> DataSpec:
    """The T5 vocabulary as dlmbench reads it for ELF (``pretrained_tokenizer(mask=False)``):
    ``<pad>`` = 0 (also the mask id: nothing is appended), ``</s>`` = 1 as EOS and BOS."""
    return DataSpec(vocab_size=vocab_size, seq_len=seq_len, pad_id=0, bos_id=1, eos_id=1, mask_id=0,
                    prefix_len=prefix_len)


def _write_cache(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` as safetensors at ``path`` atomically (temp file, fsync, rename)."""
    from safetensors.torch import save_file

    fd, tmp = temp_file(path)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_cache(path: Path) -> tuple[dict[str, Tensor], dict[str, str]] | None:
    """The converted weights and their metadata; None when the file is of another format."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CACHE_FORMAT:
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({exc}); delete it to "
                              "convert the checkpoint again") from None
    return tensors, meta


# --- the loader -----------------------------------------------------------------------
def load_official(
    source: str | os.PathLike,
    *,
    spec: DataSpec | None = None,
    preset: str | None = None,
    encoder_name: str = "t5-small",
    weights: str = "ema_params1",
    cache: str | os.PathLike | None = ".dlmbench-cache",
    **overrides: Any,
) -> ELF:
    """An :class:`ELF` holding released (or any upstream-format) weights, in eval mode.

    Args:
        source: a ``checkpoint_<step>`` file saved by upstream's ``torch.save``, a directory
            holding one (the largest step is taken), a hub id such as
            ``embedded-language-flows/ELF-B-owt-torch``, or a :data:`RELEASED` name.
        spec: the data layout; default :func:`t5_spec` at the variant's ``seq_len`` and
            ``prefix_len`` (1024 and 0 for a file that is not a released one).
        preset: ``B``, ``M`` or ``L`` (or any :class:`ELFConfig` preset with architecture
            ``overrides``); None detects it from the shapes.
        encoder_name: the T5 the latents come from (hub name or local directory); the
            checkpoint does not hold it.
        weights: ``ema_params1`` (what evaluation uses) or ``params``.
        cache: root of the converted-weights cache (``<cache>/released/<name>.safetensors``);
            None converts every time and writes nothing.
        overrides: other :class:`ELFConfig` fields (over a released variant's ``options``).

    Raises:
        CheckpointError: unreadable file, refused pickle content, missing weight set, or
            keys and shapes that do not match the preset (all listed).
        HubUnavailableError: a hub id that is neither cached nor downloadable.
    """
    if weights not in WEIGHT_SETS:
        raise ValueError(f"weights={weights!r} must be one of {WEIGHT_SETS}")
    src = str(source)
    path: Path | None = None
    hub_id: str | None = None
    released: str | None = None
    candidate = Path(src).expanduser()
    if candidate.is_dir():
        path = _latest_checkpoint(candidate)
    elif candidate.is_file():
        path = candidate
    elif (released := _released_name(src)) is not None:
        hub_id = RELEASED[released]["hub"]
    elif src.count("/") == 1 and not src.startswith((".", "/", "~")):
        hub_id = src
    else:
        raise CheckpointError(f"ELF checkpoint {src!r} is neither an existing path, a released name "
                              f"({', '.join(RELEASED)}) nor a hub id 'owner/repo'")
    if path is not None:
        name = _local_name(path)
    else:
        name = released or re.sub(r"[^A-Za-z0-9._-]+", "--", src)
    if weights != "ema_params1":
        name += f".{weights}"
    cache_path = None if cache is None else Path(cache).expanduser() / "released" / f"{name}.safetensors"
    where = str(path) if path is not None else str(hub_id)

    # 1. the weights: from the cache, or read and converted from the training state
    official: dict[str, Tensor] | None = None
    ours: dict[str, Tensor] | None = None
    cached = _read_cache(cache_path) if cache_path is not None and cache_path.is_file() else None
    if cached is not None:
        ours, meta = cached
        arch = json.loads(meta.get("architecture", "{}"))
    else:
        if path is None:
            path = _from_hub(str(hub_id))
            where = f"{hub_id} ({path})"
        official = weight_set(read_training_state(path), weights, str(path))
        arch = official_architecture(official)

    # 2. the configuration the checkpoint claims
    info = RELEASED.get(released or "", {})
    chosen = preset or detect_preset(arch)
    if preset is None and info and chosen != info["preset"]:
        raise CheckpointError(f"{where}: {released} is ELF-{info['preset']}, but the checkpoint's shapes "
                              f"({arch}) are those of {chosen or 'no released size'}")
    if chosen is None:
        raise CheckpointError(
            f"{where}: the ELF checkpoint's shapes ({arch}) match no released size "
            f"(B 12x768, M 24x1056, L 32x1280 with 64-d heads); pass preset= and the architecture overrides"
        )
    from dlmbench_elf.model import ELF

    config = ELFConfig.from_preset(chosen, **{"encoder": "frozen", "encoder_name": encoder_name,
                                              **info.get("options", {}), **overrides})
    if spec is None:
        spec = t5_spec(info.get("seq_len", 1024), info.get("prefix_len", 0), arch.get("vocab_size", T5_VOCAB))
    model = ELF(config, spec)
    what = (f"preset {chosen} ({config.depth} x {config.hidden}, {config.heads} heads, latents "
            f"D={model.latent_dim} from {encoder_name!r}, |V|={spec.vocab_size})")

    # 3. check every key and shape, convert, copy
    if ours is None:
        assert official is not None
        try:
            check_official_state(official, model.denoiser, what)
        except CheckpointError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        ours = from_official(official, config.heads)
        if cache_path is not None:
            meta = {"format": CACHE_FORMAT, "source": where, "weights": weights, "upstream": UPSTREAM,
                    "architecture": json.dumps(arch, sort_keys=True), "preset": chosen}
            _write_cache(cache_path, ours, meta)
    else:
        _check_ours(ours, model.denoiser, what)
    own = model.denoiser.state_dict()
    with torch.no_grad():
        for key, value in ours.items():
            own[key].copy_(value.to(own[key].dtype))
    return model.eval()
