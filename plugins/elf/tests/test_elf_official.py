"""The ELF loader against golden outputs of the authors' own code (``lillian039/ELF@b29d883``).

``tests/fixtures/golden/elf/`` holds a tiny ELF saved by upstream's ``save_checkpoint`` (the
released files' layout), the tiny random T5 both sides encode with, and what upstream
computed from them: a forward pass, the training loss under recorded draws and SDE / ODE
samples under recorded noise (``make_fixtures.py``, README.md there). Each test loads the
checkpoint through :func:`load_official` and replays the same inputs.

Tolerances. Everything is fp32 on CPU, where the two sides run the same arithmetic in
another order (our RoPE's channel order changes the q.k summation order, our RMSNorm
scales in fp32 before its weight): single passes agree to ~3e-7 of their scale, the loss
to ~1e-7 relative and the sampled latents exactly on this machine. ``rtol = atol = 1e-5``
(fp32 epsilon 1.2e-7 times ~100) leaves room for other kernels while a wrong mapping
moves outputs by 1e-2 or more. Sampled ids must be equal: the smallest top-1/top-2 logit
margin in the golden samples is 3e-3, far above the numerical differences.

The official decode head's GELU is tanh-approximated (``F.gelu(..., approximate="tanh")``
in ``src/modules/model.py``), as ours is: with the exact GELU logits differ by up to ~5e-4,
which ``test_decode_head_gelu_is_the_official_one`` sees.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dlmbench.data import Batch, SampleRequest
from dlmbench.errors import CheckpointError, HubUnavailableError
from dlmbench_elf import official
from dlmbench_elf.config import ELFConfig
from dlmbench_elf.model import build_denoiser
from dlmbench_elf.official import RELEASED, load_official, t5_spec
from dlmbench_elf.samplers import ODESampler, SDESampler

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "golden" / "elf"
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())
GOLDEN = load_file(str(FIXTURE / "golden.safetensors"))
CKPT = FIXTURE / MANIFEST["checkpoint"]["path"]
T5_DIR = str(FIXTURE / "t5")
ARCH = MANIFEST["arch"]
L, V, P = ARCH["max_length"], ARCH["vocab_size"], MANIFEST["prefix_len"]
# the tiny architecture as overrides of the B preset (everything else is the B recipe)
TINY = dict(depth=ARCH["depth"], hidden=ARCH["hidden_size"], heads=ARCH["num_heads"],
            bottleneck_dim=ARCH["bottleneck_dim"], latent_scale=MANIFEST["latent_std"],
            latent_mean=MANIFEST["latent_mean"])
FP32 = dict(rtol=1e-5, atol=1e-5)


def load(source=CKPT, prefix_len: int = 0, **kw):
    kw = {"spec": t5_spec(L, prefix_len, V), "preset": "B", "encoder_name": T5_DIR, "cache": None,
          **TINY, **kw}
    return load_official(source, **kw)


def training_state() -> dict:
    return torch.load(CKPT, map_location="cpu", weights_only=True)


def save_state(state: dict, tmp_path: Path, name: str = "checkpoint_7") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


# --- golden outputs -----------------------------------------------------------------------
def forward(model):
    g = {k[len("forward."):]: v for k, v in GOLDEN.items() if k.startswith("forward.")}
    with torch.no_grad():
        out, hidden = model.denoiser(g["z"], g["sc"], g["t"], g["w"], g["mode"])
        return out, model.decode_logits(hidden)


def test_forward_matches_official():
    """x-prediction and decode logits of upstream's ``ELF.forward`` (mixed decode/denoise rows,
    t in {0, .3, .75, 1}, w in {.5, 1, 3, 5})."""
    x, logits = forward(load())
    torch.testing.assert_close(x, GOLDEN["forward.x"], **FP32)
    torch.testing.assert_close(logits, GOLDEN["forward.logits"], **FP32)


def test_decode_head_gelu_is_the_official_one():
    _, logits = forward(load())
    torch.testing.assert_close(logits, GOLDEN["forward.logits"], **FP32)


def test_encoder_latents_match_official():
    """Upstream's ``encode_text`` (frozen T5, ``(h - mean) / std``; on the conditional rows the
    source attends to the source only) and ours give the same latents."""
    model = load()
    torch.testing.assert_close(model.encode(GOLDEN["loss_owt.tokens"]), GOLDEN["loss_owt.latents"], **FP32)
    cond = load(prefix_len=P)
    torch.testing.assert_close(cond.encode(GOLDEN["loss_deen.tokens"]), GOLDEN["loss_deen.latents"], **FP32)


class Replay:
    """Feeds recorded draws to ``torch.rand`` / ``randn`` / ``randn_like`` in call order,
    checking each call's kind and shape."""

    def __init__(self, monkeypatch, queue: list[tuple[str, torch.Tensor]]):
        self.queue = list(queue)
        for op in ("rand", "randn", "randn_like"):
            monkeypatch.setattr(torch, op, self._make(op))

    def _make(self, op):
        def draw(*args, **kwargs):
            if op == "randn_like":
                shape, dtype = tuple(args[0].shape), args[0].dtype
            else:
                shape = tuple(args[0]) if len(args) == 1 and not isinstance(args[0], int) else tuple(args)
                dtype = kwargs.get("dtype") or torch.float32
            assert self.queue, f"unexpected extra torch.{op}{shape}"
            want, value = self.queue.pop(0)
            assert (op, shape) == (want, tuple(value.shape)), f"drew torch.{op}{shape}, recorded {want}{tuple(value.shape)}"
            return value.clone().to(dtype)
        return draw


def replayed_draws(case: str) -> list[tuple[str, torch.Tensor]]:
    """Upstream's draws in the order our ``ELF.loss`` makes them (Bernoulli outcomes as uniforms)."""
    g = {k[len(case) + 1:]: v for k, v in GOLDEN.items() if k.startswith(case + ".")}
    B = g["tokens"].shape[0]
    as_uniform = lambda hit: torch.where(hit, torch.tensor(0.0), torch.tensor(0.999))  # noqa: E731
    queue = []
    if MANIFEST["cases"][case]["prefix_len"]:
        queue.append(("rand", as_uniform(g["label_drop"])))  # input-CFG label drop
    queue += [
        ("randn", g["t_normal"]),  # t = sigmoid(-1.5 + 0.8 n)
        ("randn_like", g["noise"]),
        ("rand", g["cfg_u"]),  # 1 + w ~ LogUniform[1.5, 6]
        ("rand", as_uniform(g["decoder_active"] > 0)),  # decode branch rows
        ("rand", g["self_cond_u"]),
        ("randn", g["decoder_level_normal"].view(B, L, 1)),  # p = sigmoid(0.8 + 0.8 n), per token
        ("randn_like", g["decoder_noise"]),
    ]
    return queue


@pytest.mark.parametrize("case", ["loss_owt", "loss_deen"])
def test_training_loss_matches_official(case, monkeypatch):
    """Upstream's ``train_step`` loss (and its L2 / CE parts) under the same draws: both branches
    and both self-conditioning choices occur; ``loss_deen`` adds the clean source, target-only
    loss, decode noise 1 and a label-dropped row."""
    facts = MANIFEST["cases"][case]
    model = load(prefix_len=facts["prefix_len"])
    replay = Replay(monkeypatch, replayed_draws(case))
    loss = model.loss(Batch(GOLDEN[f"{case}.tokens"]))
    assert not replay.queue, f"{len(replay.queue)} recorded draws unused"
    torch.testing.assert_close(loss.item(), facts["loss"], **FP32)
    torch.testing.assert_close(model.last_losses["mse"].item(), facts["l2_loss"], **FP32)
    torch.testing.assert_close(model.last_losses["ce"].item(), facts["ce_loss"], **FP32)


SAMPLERS = {
    "sample_sde": lambda f: SDESampler(SDESampler.Config(w=f["self_cond_cfg_scale"], gamma=f["sde_gamma"])),
    "sample_ode": lambda f: ODESampler(ODESampler.Config(w=f["self_cond_cfg_scale"], cfg_scale=f["cfg_scale"])),
    "sample_cond_ode": lambda f: ODESampler(ODESampler.Config(w=f["self_cond_cfg_scale"], cfg_scale=f["cfg_scale"])),
}


@pytest.mark.parametrize("case", sorted(SAMPLERS))
def test_samples_match_official(case, monkeypatch):
    """Upstream's ``_generate_samples_single_batch`` + ``_dlm_decode_batch`` (SDE gamma 1.5 w 3;
    ODE w 2; conditional ODE with input CFG 2) under the same grid and noise: the final latent
    and every sampled id of the target."""
    from dlmbench_elf import samplers

    facts = MANIFEST["cases"][case]
    g = {k[len(case) + 1:]: v for k, v in GOLDEN.items() if k.startswith(case + ".")}
    prefix = facts["prefix_len"]
    model = load(prefix_len=prefix)
    noise = [g["z0_normal"]] + [g[f"eps{i}"] for i in range(facts["eps_draws"])]

    def recorded_normal(shape, generator, device, dtype):
        assert tuple(shape) == tuple(noise[0].shape)
        return noise.pop(0).to(device=device, dtype=dtype)

    def recorded_grid(steps, kind, generator, mean, std):
        assert steps == facts["steps"] and kind == "logit-normal" and (mean, std) == (-1.5, 0.8)
        return g["t_steps"].double()

    monkeypatch.setattr(samplers, "_normal", recorded_normal)
    monkeypatch.setattr(samplers, "time_grid", recorded_grid)
    final = {}
    predict = model.predict

    def spy(z, sc, t, w, mode=None):
        if mode is not None:
            final["z"] = z
        return predict(z, sc, t, w, mode)

    monkeypatch.setattr(model, "predict", spy)
    rows = facts["rows"]
    request = SampleRequest(steps=facts["steps"], num_samples=rows, generator=torch.Generator().manual_seed(0),
                            prefix=g["tokens"][:, :prefix] if prefix else None)
    ids = SAMPLERS[case](facts).sample(model, request)
    assert not noise
    torch.testing.assert_close(final["z"], g["latent"], **FP32)
    assert torch.equal(ids[:, prefix:], g["ids"][:, prefix:])


# --- which weights, and how they are mapped -----------------------------------------------
def test_evaluation_weights_are_ema_params1():
    state = training_state()
    ema, raw = state["ema_params1"], state["params"]
    assert not torch.equal(ema["final_layer.linear.weight"], raw["final_layer.linear.weight"])
    model = load()
    assert torch.equal(model.denoiser.x_head.weight, ema["final_layer.linear.weight"])
    assert torch.equal(model.denoiser.decode_head.unembed.weight, ema["unembed_kernel"].t())
    assert torch.equal(load(weights="params").denoiser.x_head.weight, raw["final_layer.linear.weight"])


def test_mapping_round_trips_and_covers_the_denoiser():
    """Every official tensor lands in our denoiser and back unchanged; the q/k permutation is
    per head (even channels, then odd)."""
    ema = training_state()["ema_params1"]
    heads = ARCH["num_heads"]
    ours = official.from_official(ema, heads)
    model = load()
    expected = {k for k in model.denoiser.state_dict() if k != "rotary.inv_freq"}
    assert set(ours) == expected
    back = official.to_official(ours, heads)
    assert set(back) == set(ema) and all(torch.equal(back[k], ema[k]) for k in ema)
    assert official.rope_permutation(6).tolist() == [0, 2, 4, 1, 3, 5]
    hd, H = ARCH["hidden_size"] // heads, ARCH["hidden_size"]
    qkv = ema["blocks.0.attn.qkv.weight"]
    ours_qkv = ours["blocks.0.attn.qkv.weight"]
    assert torch.equal(ours_qkv[hd + 1], qkv[hd + 2])  # q of head 1, channel 1 <- channel 2
    assert torch.equal(ours_qkv[2 * H:], qkv[2 * H:])  # v untouched


def test_released_sizes_match_the_official_classes():
    """Our B/M/L denoisers (512-d T5-small latents, |V| = 32,100) expect exactly the state-dict
    names and shapes of upstream's ``ELF_B/M/L`` (recorded by make_fixtures.py), have their
    parameter counts, and each size is detected from its own shapes."""
    counts = MANIFEST["official_parameter_counts"]
    assert (counts["B"], counts["M"], counts["L"]) == (104_579_940, 342_540_036, 652_103_332)
    shapes = json.loads((FIXTURE / "official_shapes.json").read_text())
    for size in ("B", "M", "L"):
        with torch.device("meta"):
            net = build_denoiser(ELFConfig.from_preset(size), 512, counts["vocab_size"])
        assert sum(p.numel() for p in net.parameters()) == counts[size], size
        assert official.official_shapes(net) == {k: tuple(v) for k, v in shapes[size].items()}, size
        state = {k: torch.empty(v, device="meta") for k, v in shapes[size].items()}
        arch = official.official_architecture(state)
        assert official.detect_preset(arch) == size and arch["vocab_size"] == 32_100
        official.check_official_state(state, net, size)
    with torch.device("meta"):  # the T5 embedding size (32,128) is not the decode head's
        wide = build_denoiser(ELFConfig.from_preset("L"), 512, 32_128)
    with pytest.raises(CheckpointError, match=r"wrong shapes: .*unembed_kernel: checkpoint \(512, 32100\) vs \(512, 32128\)"):
        official.check_official_state(state, wide, "L")


def test_released_table():
    assert set(RELEASED) == {"ELF-B-owt", "ELF-M-owt", "ELF-L-owt", "ELF-B-de-en", "ELF-B-xsum", "ELF-B-PD-owt"}
    for name, info in RELEASED.items():
        assert info["hub"] == f"embedded-language-flows/{name}-torch"
        assert info["preset"] == name.split("-")[1]
        assert info["distilled"] == ("PD" in name)
        assert (info["prefix_len"] > 0) == (info["task"] != "openwebtext")
        facts = official.RELEASED_WEIGHTS[name]  # the catalogue dlmbench's released:NAME reads
        assert (facts.hub, facts.distilled) == (info["hub"], info["distilled"]) and facts.trained_on
    assert "45.2B" in official.RELEASED_WEIGHTS["ELF-B-owt"].trained_on


# --- refusals --------------------------------------------------------------------------------
def edited(tmp_path, edit) -> Path:
    state = training_state()
    edit(state["ema_params1"])
    return save_state(state, tmp_path)


def test_unknown_and_missing_keys_are_listed(tmp_path):
    def rename(ema):
        ema["blocks.1.mlp.w3.b"] = ema.pop("blocks.1.mlp.w3.bias")
        ema["blocks.2.norm1.weight"] = torch.ones(ARCH["hidden_size"])
        del ema["unembed_bias"]

    with pytest.raises(CheckpointError) as err:
        load(edited(tmp_path, rename))
    msg = str(err.value)
    assert "unknown keys ['blocks.1.mlp.w3.b', 'blocks.2.norm1.weight']" in msg
    assert "missing keys ['blocks.1.mlp.w3.bias', 'unembed_bias']" in msg


def test_wrong_shapes_are_listed(tmp_path):
    def reshape(ema):
        ema["proj_kernel"] = ema["proj_kernel"].t().contiguous()  # stored as ours, not as upstream's
        ema["self_cond_cfg_tokens"] = ema["self_cond_cfg_tokens"][:, :3]

    with pytest.raises(CheckpointError) as err:
        load(edited(tmp_path, reshape))
    msg = str(err.value)
    assert "proj_kernel: checkpoint (16, 24) vs (24, 16)" in msg
    assert "self_cond_cfg_tokens: checkpoint (1, 3, 24) vs (1, 4, 24)" in msg


def test_a_preset_that_does_not_fit_is_refused():
    with pytest.raises(CheckpointError, match="match no released size"):
        load(preset=None)
    with pytest.raises(CheckpointError) as err:
        load(depth=3, heads=4)  # claims one block more and 6-d heads
    msg = str(err.value)
    assert "preset B (3 x 24, 4 heads" in msg
    assert "missing keys ['blocks.2.attn.k_norm.weight'" in msg
    assert "blocks.0.attn.q_norm.weight: checkpoint (12,) vs (6,)" in msg


class Payload:
    """Unpickling this would run ``os.system``; weights_only must refuse it before that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Custom:
    pass


def test_non_tensor_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    state = training_state()
    state["opt_state"] = {"payload": Payload(marker)}
    with pytest.raises(CheckpointError, match="refused to unpickle it: it needs posix.system"):
        load(save_state(state, tmp_path, "checkpoint_1"))
    assert not marker.exists()
    state["opt_state"] = {"custom": Custom()}
    with pytest.raises(CheckpointError, match="refused to unpickle.*Custom"):
        load(save_state(state, tmp_path, "checkpoint_2"))


def test_malformed_training_states_are_refused(tmp_path):
    garbage = tmp_path / "checkpoint_3"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable torch.save file"):
        load(garbage)
    state = training_state()
    del state["ema_params1"]
    with pytest.raises(CheckpointError, match="no 'ema_params1'.*weights='params'"):
        load(save_state(state, tmp_path, "checkpoint_4"))
    state = training_state()
    state["ema_params1"]["mode_tokens"] = [1.0, 2.0]
    with pytest.raises(CheckpointError, match=r"not tensors: \['mode_tokens'\]"):
        load(save_state(state, tmp_path, "checkpoint_5"))
    torch.save([1, 2], tmp_path / "checkpoint_6")
    with pytest.raises(CheckpointError, match="holds a list"):
        load(tmp_path / "checkpoint_6")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint_<step> file"):
        load(tmp_path / "empty")


def test_a_directory_loads_its_latest_checkpoint(tmp_path):
    state = training_state()
    shutil.copy(CKPT, tmp_path / "checkpoint_20")
    state["ema_params1"] = state["params"]
    save_state(state, tmp_path, "checkpoint_3")  # an older step holding other weights
    model = load(tmp_path)
    assert torch.equal(model.denoiser.x_head.weight, training_state()["ema_params1"]["final_layer.linear.weight"])


# --- cache and hub ---------------------------------------------------------------------------
def test_the_safetensors_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load(cache=cache)
    files = list((cache / "released").iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors" and files[0].name.startswith("checkpoint_1000-")
    assert not list((cache / "released").glob(".*.tmp"))
    written = files[0].stat().st_mtime_ns
    assert "x_head.weight" in load_file(str(files[0]))  # stored in our names and layout

    def no_torch_load(*args, **kwargs):
        raise AssertionError("the training state was read again")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "load", no_torch_load)
        again = load(cache=cache)
    assert files[0].stat().st_mtime_ns == written
    for a, b in zip(forward(first), forward(again)):
        assert torch.equal(a, b)
    torch.testing.assert_close(forward(again)[0], GOLDEN["forward.x"], **FP32)
    # a file of another conversion format is converted again, in place
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(files[0]), metadata={"format": "dlmbench-elf-official/0"})
    torch.testing.assert_close(forward(load(cache=cache))[0], GOLDEN["forward.x"], **FP32)
    assert "x_head.weight" in load_file(str(files[0]))
    monkeypatch.chdir(tmp_path)
    load(cache=None)
    assert not (tmp_path / ".dlmbench-cache").exists()


def test_hub_ids_offline(tmp_path, monkeypatch):
    """Offline, a released checkpoint that is neither converted nor in the Hugging Face cache
    fails at once naming the hub id and the download; once converted it loads offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for source in ("ELF-B-owt", "embedded-language-flows/ELF-B-owt-torch"):
        with pytest.raises(HubUnavailableError) as err:
            load_official(source, cache=tmp_path)
        assert "'embedded-language-flows/ELF-B-owt-torch'" in str(err.value)
        assert "hf download embedded-language-flows/ELF-B-owt-torch --local-dir" in str(err.value)
    # a converted file under the released name is all a later load needs (the tiny one stands in)
    load(cache=tmp_path)
    (converted,) = (tmp_path / "released").iterdir()
    converted.rename(tmp_path / "released" / "ELF-B-owt.safetensors")
    model = load("embedded-language-flows/ELF-B-owt-torch", cache=tmp_path)
    assert torch.equal(model.denoiser.x_head.weight, training_state()["ema_params1"]["final_layer.linear.weight"])


def test_the_registry_loader_passes_the_entry_through(monkeypatch, tmp_path):
    """``ELF.load_weights`` (what a run's ``weights`` entry calls) hands the source, spec,
    cache, preset and the entry's options to :func:`load_official` unchanged."""
    from dlmbench_elf.model import ELF

    seen = {}

    def spy(source, **kwargs):
        seen.update(source=source, **kwargs)
        return "model"

    monkeypatch.setattr(official, "load_official", spy)
    spec = t5_spec(64)
    got = ELF.load_weights("some/repo", spec, {"encoder_name": "t5-base", "weights": "params"}, tmp_path, "M")
    assert got == "model"
    assert seen == {"source": "some/repo", "spec": spec, "cache": tmp_path, "preset": "M",
                    "encoder_name": "t5-base", "weights": "params"}
