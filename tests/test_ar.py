"""The autoregressive baseline ``ar``: loss, KV cache, exact sampling, NFE, training."""

from __future__ import annotations

import itertools
import re
import math

import pluggy
import pytest
import torch

from dlmbench import hookspecs
from dlmbench.builtin import ar as ar_plugin
from dlmbench.builtin import ar_sampler
from dlmbench.builtin.ar import AR, ARConfig
from dlmbench.builtin.ar_sampler import Ancestral, AncestralConfig, Greedy, top_p_filter
from dlmbench.data import Batch, DataSpec, SampleRequest
from dlmbench.model import Model
from dlmbench.nfe import count_nfe
from dlmbench.nn.attention import attention
from dlmbench.plugins import build_registry
from dlmbench.testing.draws import float64_draws
from dlmbench.training import fit

PAD, BOS, EOS, MASK = 0, 2, 3, 4


def spec_(vocab=12, seq_len=6, prefix_len=0):
    return DataSpec(vocab, seq_len, PAD, BOS, EOS, MASK, prefix_len)


def tiny(spec, **kw):
    torch.manual_seed(0)
    cfg = ARConfig.from_preset("tiny", n_layer=2, n_head=2, n_embd=16, **kw)
    return AR(cfg, spec).eval()


def request(n, seed, prefix=None, steps=4):
    return SampleRequest(steps, n, torch.Generator().manual_seed(seed), prefix)


# --- registration and config ---------------------------------------------------------------
def test_registers_model_and_samplers():
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(ar_plugin, name="dlmbench.builtin.ar")
    reg = build_registry(pm)
    assert reg.model("ar") is AR
    assert reg.sampler("ar") is Ancestral  # the default sampler
    assert reg.samplers_for("ar") == ["ancestral", "greedy"]


def test_presets():
    small = ARConfig.from_preset("small")
    assert (small.n_layer, small.n_embd, small.n_head) == (12, 768, 12)
    assert (small.lr, small.warmup_steps, small.ema_decay) == (3e-4, 2500, 0.9999)
    t = ARConfig.from_preset("tiny")
    assert 2 <= t.n_layer <= 4 and t.n_embd == 128
    assert (t.lr, t.warmup_steps) == (1e-3, 100)
    with pytest.raises(ValueError):
        ARConfig(n_embd=30, n_head=4)


# --- loss and likelihood -------------------------------------------------------------------
def hand_nll(model, x):
    """Per-position NLL by hand: input [BOS, x_0..x_{L-2}], [MASK] excluded."""
    B, L = x.shape
    inp = torch.cat([torch.full((B, 1), BOS), x[:, :-1]], dim=1)
    out = torch.zeros(B, L)
    logits = model.net(inp).float()
    for b in range(B):
        for i in range(L):
            z = logits[b, i].clone()
            z[MASK] = -math.inf
            out[b, i] = -(z[x[b, i]] - torch.logsumexp(z, 0))
    return out


def test_loss_is_next_token_ce():
    spec = spec_()
    model = tiny(spec)
    x = torch.randint(5, spec.vocab_size, (3, spec.seq_len))
    nll = hand_nll(model, x)
    torch.testing.assert_close(model.loss(Batch(x)), nll.mean())
    torch.testing.assert_close(model.nelbo(Batch(x)), nll.sum(1))
    mask = torch.rand(x.shape) < 0.5
    mask[0, 0] = True
    torch.testing.assert_close(model.loss(Batch(x, mask)), nll[mask].mean())


def test_conditional_loss_covers_targets_only():
    spec = spec_(prefix_len=2)
    model = tiny(spec)
    x = torch.randint(5, spec.vocab_size, (3, spec.seq_len))
    nll = hand_nll(model, x)[:, 2:]
    torch.testing.assert_close(model.loss(Batch(x)), nll.mean())
    torch.testing.assert_close(model.nelbo(Batch(x)), nll.sum(1))


def test_nelbo_is_exact_likelihood():
    """exp(-nelbo) sums to 1 over every sequence of a tiny vocabulary (AR is exact)."""
    spec = spec_(vocab=7, seq_len=3)
    model = tiny(spec)
    allowed = [i for i in range(7) if i != MASK]
    seqs = torch.tensor(list(itertools.product(allowed, repeat=3)))
    with torch.no_grad():
        total = torch.exp(-model.nelbo(Batch(seqs)).double()).sum()
    assert abs(total.item() - 1.0) < 1e-5


# --- attention and KV cache ----------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_causal_attention(backend):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    full = attention(q, k, v, backend=backend, causal=True)
    keep = torch.ones(7, 7, dtype=torch.bool).tril()
    ref = attention(q, k, v, mask=keep[None, None], backend="math")
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=1e-5)
    # queries at the end of longer keys (decoding with a cache) are aligned bottom-right
    tail = attention(q[:, :, 4:], k, v, backend=backend, causal=True)
    torch.testing.assert_close(tail, full[:, :, 4:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("prefix_len", [0, 3])
def test_kv_cache_matches_full_forward(backend, prefix_len):
    spec = spec_(seq_len=9, prefix_len=prefix_len)
    model = tiny(spec, attention_backend=backend)
    x = torch.randint(5, spec.vocab_size, (2, spec.seq_len))
    inp = model.shift_right(x)
    with torch.no_grad():
        full = model.logits(inp)
        cache = model.init_cache(2)
        first = prefix_len + 1  # [BOS] + prefix in one call, then one token per call
        steps = [model.logits(inp[:, :first], cache, 0)]
        for t in range(first, spec.seq_len):
            steps.append(model.logits(inp[:, t : t + 1], cache, t))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


# --- exact sampling with a stand-in model --------------------------------------------------
class MarkovNet(torch.nn.Module):
    """Logits of position ``p`` given the previous token: ``table[p, prev]``."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, idx, cache=None, start=0):
        pos = torch.arange(start, start + idx.shape[1])
        return self.table[pos[None, :], idx]  # (B, T, V)


class StandIn(Model):
    name = "standin"

    def __init__(self, spec, table):
        super().__init__(None, spec)
        self.net = MarkovNet(table)

    @property
    def network(self):
        return self.net

    def init_cache(self, batch_size):
        return None

    def logits(self, idx, cache=None, start=0):
        return self.net(idx, cache, start)


def markov_table(spec, allowed, seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.full((spec.seq_len, spec.vocab_size, spec.vocab_size), -math.inf, dtype=torch.float64)
    table[:, :, allowed] = torch.randn(spec.seq_len, spec.vocab_size, len(allowed), generator=g, dtype=torch.float64)
    return table


def chi2_critical(df, z=3.09):  # Wilson-Hilferty, upper 0.001 tail
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_ancestral_reproduces_joint(temperature, top_p):
    spec = spec_(vocab=8, seq_len=3)
    allowed = [EOS, 5, 6, 7]
    table = markov_table(spec, allowed)
    model = StandIn(spec, table)
    n = 20_000
    sampler = Ancestral(AncestralConfig(temperature=temperature, top_p=top_p))
    out = sampler.sample(model, request(n, seed=1))

    def cond(pos, prev):  # the sampler's target distribution, computed independently
        p = torch.softmax(table[pos, prev] / temperature, -1)
        order = sorted(range(spec.vocab_size), key=lambda v: -p[v].item())
        kept, mass = [], 0.0
        for v in order:
            if mass >= top_p:
                break
            kept.append(v)
            mass += p[v].item()
        q = torch.zeros_like(p)
        q[kept] = p[kept]
        return q / q.sum()

    counts = {}
    for row in out.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    chi2, cells = 0.0, 0
    for seq in itertools.product(allowed, repeat=3):
        prob, prev = 1.0, BOS
        for pos, tok in enumerate(seq):
            prob *= cond(pos, prev)[tok].item()
            prev = tok
        if prob == 0:
            assert counts.get(seq, 0) == 0, f"{seq} has probability 0 but was sampled"
            continue
        chi2 += (counts.get(seq, 0) - n * prob) ** 2 / (n * prob)
        cells += 1
    assert sum(counts.values()) == n
    assert chi2 < chi2_critical(cells - 1), (chi2, cells)


@pytest.mark.parametrize("sampler,draws", [(Ancestral(), 3), (Greedy(), 0)])
def test_every_draw_is_a_float64_categorical_draw(sampler, draws):
    """Catches a float32 draw (the weights or the noise of dlmbench.categorical) and a draw
    that bypasses it (multinomial, a float32 Gumbel); one draw per generated token."""
    spec = spec_(vocab=8, seq_len=3)
    model = StandIn(spec, markov_table(spec, [EOS, 5, 6, 7]))
    with float64_draws(ar_sampler) as seen:
        sampler.sample(model, request(64, seed=2))
    assert seen.categorical.get(ar_sampler.__name__, 0) == draws
    assert len(seen.floats) == draws


def test_top_p_filter():
    p = torch.tensor([[0.1, 0.5, 0.15, 0.25]], dtype=torch.float64)
    assert top_p_filter(p, 0.5).tolist() == [[0.0, 0.5, 0.0, 0.0]]
    assert top_p_filter(p, 0.6).tolist() == [[0.0, 0.5, 0.0, 0.25]]
    assert top_p_filter(p, 0.01).tolist() == [[0.0, 0.5, 0.0, 0.0]]  # the top token stays
    assert torch.equal(top_p_filter(p, 1.0), p)


def test_greedy_follows_argmax():
    spec = spec_(vocab=8, seq_len=4)
    table = markov_table(spec, [EOS, 5, 6, 7], seed=3)
    out = Greedy().sample(StandIn(spec, table), request(2, seed=0))
    prev, expect = BOS, []
    for pos in range(4):
        prev = int(table[pos, prev].argmax())
        expect.append(prev)
    assert out.tolist() == [expect, expect]


# --- NFE, conditioning and seeds -----------------------------------------------------------
@pytest.mark.parametrize("prefix_len", [0, 3])
@pytest.mark.parametrize("sampler", [Ancestral(), Greedy()])
def test_nfe_is_generated_length(prefix_len, sampler):
    spec = spec_(seq_len=10, prefix_len=prefix_len)
    model = tiny(spec)
    prefix = torch.randint(5, spec.vocab_size, (5, prefix_len)) if prefix_len else None
    with count_nfe(model) as counter:
        out = sampler.sample(model, request(5, seed=0, prefix=prefix, steps=2))
    generated = spec.seq_len - prefix_len
    assert counter.calls == generated  # one call over the whole batch per token
    assert counter.per_sample(5) == generated
    for steps in (1, 2, 1000):  # AR ignores the step budget
        assert sampler.max_nfe(steps, spec) == generated
    assert sampler.max_nfe(7) == generated  # remembered from the last sample() call
    assert out.shape == (5, spec.seq_len) and out.dtype == torch.long
    if prefix is not None:
        assert torch.equal(out[:, :prefix_len], prefix)
    assert not (out[:, prefix_len:] == MASK).any()


def test_seed_determines_samples():
    spec = spec_(seq_len=8)
    model = tiny(spec)
    a = Ancestral().sample(model, request(6, seed=5))
    b = Ancestral().sample(model, request(6, seed=5))
    c = Ancestral().sample(model, request(6, seed=6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampling_restores_train_mode():
    spec = spec_(seq_len=5)
    model = tiny(spec).train()
    Ancestral().sample(model, request(2, seed=0))
    assert model.training


# --- training ------------------------------------------------------------------------------
def test_loss_falls_under_fit():
    spec = spec_(vocab=20, seq_len=32)
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, 15, (512, 1), generator=g)
    train = 5 + (start + torch.arange(32)) % 15  # counting sequences: easy to learn
    torch.manual_seed(0)
    model = AR(ARConfig.from_preset("tiny", lr=3e-3, warmup_steps=0, ema_decay=0.0), spec)
    report = fit(model, train, batch_size=32, steps=20, seed=0)
    assert report.tokens == 32 * 32 * 20
    assert sum(report.losses[-5:]) / 5 < report.losses[0] - 1.0


# --- the plugin conformance kit ------------------------------------------------------------
from dlmbench.testing.conformance import ModelConformance  # noqa: E402


class TestARConformance(ModelConformance):
    model_name = "ar"


# --- the token choice: top-p, temperature, precision, shapes -------------------------------
def test_top_p_one_keeps_even_a_token_below_float64_resolution():
    """top_p = 1 is "no truncation": a token whose mass (1e-20) vanishes next to the top
    token's in float64 (1 + 1e-20 == 1, so the mass above it already equals the total)
    must stay."""
    p = torch.tensor([[1.0, 1e-20, 0.0]], dtype=torch.float64)
    assert torch.equal(top_p_filter(p, 1.0), p)


def test_top_p_filter_acts_on_the_last_axis_of_any_shape():
    """Same rows as ``test_top_p_filter`` (kept sets worked by hand) as one 1-D vector and
    inside a (2, 2, 4) batch."""
    p = torch.tensor([0.1, 0.5, 0.15, 0.25], dtype=torch.float64)
    assert top_p_filter(p, 0.6).tolist() == [0.0, 0.5, 0.0, 0.25]
    q = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    batch = torch.stack([torch.stack([p, q]), torch.stack([q, p])])  # (2, 2, 4)
    kept_p, kept_q = [0.0, 0.5, 0.0, 0.25], [0.4, 0.3, 0.0, 0.0]  # mass 0.75 and 0.7 >= 0.6
    assert top_p_filter(batch, 0.6).tolist() == [[kept_p, kept_q], [kept_q, kept_p]]


def test_top_p_filter_reads_unnormalised_weights_relative_to_their_total():
    """Weights 4, 3, 2, 1 (total 10) at top_p = 0.6: 4 alone is 40% < 60%, 4 + 3 is 70%,
    so those two stay; scaling the weights does not change the kept set."""
    w = torch.tensor([[4.0, 3.0, 2.0, 1.0]], dtype=torch.float64)
    assert top_p_filter(w, 0.6).tolist() == [[4.0, 3.0, 0.0, 0.0]]
    assert top_p_filter(w / 10, 0.6).tolist() == [[0.4, 0.3, 0.0, 0.0]]


def _logits(rows=4096, vocab=32, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _gen(seed=1):
    return torch.Generator().manual_seed(seed)


def test_temperature_divides_the_logits():
    """``softmax(logits / T)``: at T = 2 the draws are those of T = 1 on the halved logits
    (the same generator seed gives the same exponential race)."""
    logits = _logits()
    hot = Ancestral(AncestralConfig(temperature=2.0)).choose(logits, _gen())
    assert torch.equal(hot, Ancestral().choose(logits / 2, _gen()))
    assert not torch.equal(hot, Ancestral().choose(logits, _gen()))  # power: T matters here


def test_choice_of_bf16_logits_is_made_in_float64():
    """A bf16 network's logits are promoted before the softmax: the draws equal those of
    the same logits in float64 (a bf16 softmax rounds probabilities by up to 2^-9, which
    flips a few of these 8192 races)."""
    logits = _logits(rows=8192).to(torch.bfloat16)
    for sampler in (Ancestral(), Ancestral(AncestralConfig(temperature=0.5, top_p=0.9))):
        assert torch.equal(sampler.choose(logits, _gen()), sampler.choose(logits.double(), _gen()))


@pytest.mark.parametrize("sampler", [Ancestral(), Ancestral(AncestralConfig(temperature=0.7, top_p=0.8)), Greedy()])
def test_choice_is_per_row_over_the_last_axis(sampler):
    """(B, T, V) logits give (B, T) tokens, each row chosen as if alone: the same draws
    as the flattened (B T, V) rows (the race's uniforms come in the same order)."""
    logits = _logits(rows=6 * 5, vocab=7).view(6, 5, 7)
    out = sampler.choose(logits, _gen())
    assert out.shape == (6, 5)
    assert torch.equal(out, sampler.choose(logits.reshape(30, 7), _gen()).view(6, 5))


@pytest.mark.parametrize("sampler", [Ancestral(), Greedy()])
def test_nfe_is_exact_and_needs_the_length(sampler):
    """AR's count is exact (one call per generated token, no early exit); before it has
    seen a spec it cannot know the length and says so."""
    assert sampler.exact_nfe() is True
    fresh = type(sampler)()
    with pytest.raises(ValueError, match=re.escape(
            f"ar/{fresh.name} takes one NFE per generated token, independent of steps; "
            "pass spec= (or sample once) so it knows the length")):
        fresh.max_nfe(8)


# --- architecture and init, against an independent reading ---------------------------------
def test_parameters_are_the_documented_architecture():
    """Every parameter by name and shape: n_layer pre-norm blocks, bias-free LayerNorms and
    attention / output Linears, an MLP of ratio 4 (nn.Linear with bias), an untied head by
    default and ``head.weight is tok_emb.weight`` under ``tie_weights``. Catches a bias added
    to a LayerNorm, qkv, proj or the head, lost blocks, and a broken tie."""
    V, C, L = 12, 16, 2
    expect = {"tok_emb.weight": (V, C), "ln_f.weight": (C,), "head.weight": (V, C)}
    for i in range(L):
        expect.update({f"blocks.{i}.ln1.weight": (C,), f"blocks.{i}.attn.qkv.weight": (3 * C, C),
                       f"blocks.{i}.attn.proj.weight": (C, C), f"blocks.{i}.ln2.weight": (C,),
                       f"blocks.{i}.mlp.fc.weight": (4 * C, C), f"blocks.{i}.mlp.fc.bias": (4 * C,),
                       f"blocks.{i}.mlp.proj.weight": (C, 4 * C), f"blocks.{i}.mlp.proj.bias": (C,)})
    net = tiny(spec_(vocab=V)).net
    assert {n: tuple(p.shape) for n, p in net.named_parameters()} == expect
    assert net.head.weight is not net.tok_emb.weight
    tied = tiny(spec_(vocab=V), tie_weights=True)
    assert tied.net.head.weight is tied.net.tok_emb.weight
    assert tied.logits(torch.randint(5, V, (1, 3))).shape == (1, 3, V)


def _generic_parameters(net, seed=0):
    """Overwrite the init with generic values (O(1) activations), so that every
    nonlinearity and sign of the forward shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            z = torch.randn(p.shape, generator=g)
            if p.dim() == 2:
                p.copy_(z / math.sqrt(p.shape[1]) * (1.0 if "emb" not in name else math.sqrt(p.shape[1])))
            elif name.endswith("bias"):
                p.copy_(0.3 * z)
            else:  # LayerNorm gains
                p.copy_(1.0 + 0.3 * z)


def _reference_forward(net, idx, n_head):
    """The network re-read from its parameters, in float64: pre-LN residual blocks
    ``x + attn(ln1 x)``, ``x + mlp(ln2 x)``; rotary (GPT-NeoX rotate-half, base 10000:
    channels ``j`` and ``j + D/2`` turned by ``t * 10000^(-2j/D)``) on q and k; causal
    softmax attention with scale ``1/sqrt(D)``; tanh-GELU MLP; final LayerNorm and head."""
    P = {n: p.detach().double() for n, p in net.named_parameters()}
    B, T = idx.shape
    C = P["tok_emb.weight"].shape[1]
    D, h = C // n_head, C // n_head // 2

    def ln(x, w):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * w

    t = torch.arange(T, dtype=torch.float64)[:, None]
    angle = t * 10000.0 ** (-2 * torch.arange(h, dtype=torch.float64) / D)  # (T, h)
    cos, sin = angle.cos(), angle.sin()

    def rotate(u):  # (B, H, T, D)
        a, b = u[..., :h], u[..., h:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    def gelu(u):
        return 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))

    x = P["tok_emb.weight"][idx]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(len(net.blocks)):
        pre = f"blocks.{i}."
        q, k, v = (ln(x, P[pre + "ln1.weight"]) @ P[pre + "attn.qkv.weight"].T).split(C, dim=-1)
        q, k, v = (u.view(B, T, n_head, D).transpose(1, 2) for u in (q, k, v))
        scores = (rotate(q) @ rotate(k).transpose(-1, -2) / math.sqrt(D)).masked_fill(future, -math.inf)
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ P[pre + "attn.proj.weight"].T
        u = ln(x, P[pre + "ln2.weight"]) @ P[pre + "mlp.fc.weight"].T + P[pre + "mlp.fc.bias"]
        x = x + gelu(u) @ P[pre + "mlp.proj.weight"].T + P[pre + "mlp.proj.bias"]
    return ln(x, P["ln_f.weight"]) @ P["head.weight"].T


def test_forward_matches_a_plain_reimplementation():
    """The network, in one call and chunked through a KV cache (positions [0, 3) then
    [3, 8)), equals the re-implementation above. Catches a flipped residual sign, the erf
    GELU for the tanh one, and a misplaced start."""
    spec = spec_(vocab=12, seq_len=8)
    model = tiny(spec)
    _generic_parameters(model.net)
    idx = torch.randint(0, spec.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    ref = _reference_forward(model.net, idx, n_head=2).float()
    with torch.no_grad():
        torch.testing.assert_close(model.net(idx), ref, atol=1e-5, rtol=1e-5)
        cache = model.init_cache(2)
        chunks = [model.net(idx[:, :3], cache, 0), model.net(idx[:, 3:], cache, 3)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), ref, atol=1e-5, rtol=1e-5)


def test_a_block_without_start_begins_at_position_zero():
    """``start`` defaults to 0 (a fresh sequence) in a block and in its attention: called
    with a cache and no start, each writes its keys at [0, T) and returns what the uncached
    call returns. Catches another default."""
    spec = spec_(vocab=12, seq_len=8)
    model = tiny(spec)
    _generic_parameters(model.net)
    block, T = model.net.blocks[0], 5
    x = torch.randn(2, T, 16, generator=torch.Generator().manual_seed(2))
    cos, sin = model.net.rotary.cos_sin(T, x.device)
    with torch.no_grad():
        for call in (block, lambda u, c, s, cache=None: block.attn(block.ln1(u), c, s, cache)):
            cache = model.init_cache(2)
            torch.testing.assert_close(call(x, cos, sin, cache), call(x, cos, sin), atol=1e-6, rtol=1e-6)
            keys = cache.keys[0]
            assert keys[:, :, :T].ne(0).any(-1).all()
            assert not keys[:, :, T:].any() and not cache.values[0][:, :, T:].any()


def test_init_statistics():
    """GPT-2 init: every Linear and Embedding weight ~ N(0, 0.02), the residual projections
    (``*proj.weight``) ~ N(0, 0.02 / sqrt(2 n_layer)), Linear biases 0, LayerNorm gains 1.
    Each group's mean and standard deviation is within 5 standard errors (sigma / sqrt(n)
    and sigma / sqrt(2n)); the tolerance rejects the nearest wrong scale (0.02 / sqrt(3
    n_layer)), and the projections' scale is not the plain 0.02."""
    L = 2
    torch.manual_seed(0)
    net = AR(ARConfig.from_preset("tiny", n_layer=L, n_head=2, n_embd=64), spec_(vocab=64)).net
    proj_sigma = 0.02 / math.sqrt(2 * L)
    groups = {0.02: [], proj_sigma: []}
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            assert not p.any(), name
        elif p.dim() == 1:
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            groups[proj_sigma if name.endswith("proj.weight") else 0.02].append(p.detach().double().flatten())
    for sigma, ps in groups.items():
        w = torch.cat(ps)
        n = w.numel()
        std_tol = 5 * sigma / math.sqrt(2 * n)
        assert abs(w.mean().item()) < 5 * sigma / math.sqrt(n), (sigma, w.mean())
        assert abs(w.std().item() - sigma) < std_tol, (sigma, w.std())
        if sigma == proj_sigma:  # power: the nearest alternatives are far outside the tolerance
            assert abs(0.02 / math.sqrt(3 * L) - sigma) > 4 * std_tol
            assert abs(0.02 - sigma) > 4 * std_tol


def test_positions_beyond_max_len_are_refused():
    """start + T may reach max_len (the cache's last slot) and not pass it; the error says
    how far the call reached."""
    spec = spec_(seq_len=6)
    model = tiny(spec)
    idx = torch.randint(5, spec.vocab_size, (1, 4))
    with torch.no_grad():
        assert model.net(idx[:, :2], model.init_cache(1), 4).shape == (1, 2, spec.vocab_size)
        with pytest.raises(ValueError, match=r"^positions up to 7 exceed max_len=6$"):
            model.net(idx, model.init_cache(1), 3)  # start - T = -1 would pass
        with pytest.raises(ValueError, match=r"^positions up to 7 exceed max_len=6$"):
            model.net(torch.randint(5, spec.vocab_size, (1, 7)))


def test_loss_of_one_kept_token_is_its_nll():
    """The mean over the counted positions divides by their number, also when it is 1."""
    spec = spec_()
    model = tiny(spec)
    x = torch.randint(5, spec.vocab_size, (2, spec.seq_len))
    keep = torch.zeros(x.shape, dtype=torch.bool)
    keep[1, 3] = True
    with torch.no_grad():
        torch.testing.assert_close(model.loss(Batch(x, keep)), hand_nll(model, x)[1, 3])


def test_tensors_are_made_on_the_data_device_and_the_model_dtype():
    """With PyTorch's default device set to ``meta`` (the model and data stay on the cpu),
    a tensor made without naming the data's device lands on meta and the computation fails
    or leaves the cpu; the cache follows the model's dtype (float64 here). Covers the rotary
    tables, the KV cache, init_cache and the [MASK] index of logits."""
    spec = spec_(seq_len=6)
    model = tiny(spec).double()
    x = torch.randint(5, spec.vocab_size, (2, spec.seq_len))
    inp = model.shift_right(x)
    with torch.no_grad():
        full = model.logits(inp)
        for direct in (False, True):
            with torch.device("meta"):
                if direct:
                    cfg = model.config
                    cache = ar_plugin.KVCache(cfg.n_layer, 2, cfg.n_head, spec.seq_len, 8,
                                              torch.device("cpu"), torch.float64)
                else:
                    cache = model.init_cache(2)
                steps = [model.logits(inp[:, :2], cache, 0)] + [
                    model.logits(inp[:, t : t + 1], cache, t) for t in range(2, spec.seq_len)]
            for t in cache.keys + cache.values:
                assert (t.device.type, t.dtype, tuple(t.shape)) == ("cpu", torch.float64, (2, 2, 6, 8))
            out = torch.cat(steps, dim=1)
            assert out.device.type == "cpu" and torch.isinf(out[..., MASK]).all()
            torch.testing.assert_close(out, full, atol=1e-9, rtol=1e-9)


def test_attention_uses_the_configured_backend(monkeypatch):
    """Every attention call gets the config's ``attention_backend`` (recorded by wrapping
    the kernel switch); an unknown name is refused at the first call."""
    seen = []

    def recording(*args, **kw):
        seen.append(kw.get("backend"))
        return attention(*args, **kw)

    monkeypatch.setattr(ar_plugin, "attention", recording)
    spec = spec_(seq_len=4)
    with torch.no_grad():
        tiny(spec, attention_backend="math").logits(torch.randint(5, spec.vocab_size, (1, 4)))
    assert seen == ["math", "math"]
