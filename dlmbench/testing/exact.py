"""Exact reference distributions for sampler tests, by enumeration over a tiny joint.

A sampler driven by the *exact* denoiser of a data distribution is still not exact: the
positions it updates in one step are drawn independently of each other given the current
state, so with few steps it produces a different distribution (for a masked sampler with
one step, the product of the marginals). These helpers compute, for a joint given as
``states (S, L)`` and ``probs (S,)``, the exact denoisers a stand-in network can return
and the distribution over final sequences that the ideal sampler of a given step grid
produces, so a test compares a sampler with what it should produce at that step count,
not with the data. :func:`chi_square_pvalue` scores samples against such a reference;
:func:`samples_for_power` gives the sample size at which a wrong reference is reliably
rejected (the power check every such test should make).

* Masked (absorbing-state) diffusion, MDLM's ancestral step (``kuleshov-group/mdlm@c112c52
  diffusion.py``, ``_ddpm_update``): from ``t`` to ``s`` each masked position unmasks with probability
  ``(alpha_s - alpha_t) / (1 - alpha_t)`` and then draws from its exact posterior given
  the unmasked tokens; unmasked tokens stay.
* Uniform-state diffusion, Duo's ancestral step (Sahoo et al. 2025, Eq. 4): every
  position draws ``z_s`` from the true per-position reverse marginal
  ``sum_x p(x^l = x | z_t) q(z_s | z_t, x)``, independently across positions.

Keep ``S`` and ``K ** L`` small (hundreds): the enumeration is dense.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch

# -- masked (absorbing-state) diffusion -------------------------------------------------------


def masked_posterior(states: torch.Tensor, probs: torch.Tensor, x: torch.Tensor, mask_id: int,
                     vocab_size: int) -> torch.Tensor:
    """``p(x^l = k | the unmasked tokens of x)``, ``(B, L, K)`` float64, for ``x (B, L)``.

    Masking is independent of the content, so this is the data conditional given the
    visible tokens, for every ``t``; at unmasked positions it is one-hot on the token."""
    fits = ((x[:, None, :] == states[None]) | (x[:, None, :] == mask_id)).all(-1)  # (B, S)
    w = fits.double() * probs.double()[None]
    if bool((w.sum(-1) == 0).any()):
        raise ValueError("a row of x is consistent with no state of positive probability")
    onehot = torch.nn.functional.one_hot(states, vocab_size).double()  # (S, L, K)
    return (w[:, :, None, None] * onehot[None]).sum(1) / w.sum(-1)[:, None, None]


def masked_ideal(states: torch.Tensor, probs: torch.Tensor, alphas: torch.Tensor | Sequence[torch.Tensor],
                 mask_id: int, vocab_size: int, noise_removal: bool = True,
                 blocks: Sequence[Sequence[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distribution of the final sequences of the ideal masked sampler on ``alphas``.

    ``alphas`` are ``alpha`` at the grid times ``t_0 > t_1 > ... > t_steps``; the chain
    starts all-masked and runs over the ``(K' + 1) ** L`` partial states (``K'`` the
    tokens that occur in ``states``). With ``noise_removal`` a position still masked at
    the end takes the argmax of its posterior (MDLM's last call). Semi-autoregressive
    ``blocks`` (lists of positions, in generation order) take one ``alphas`` each and
    only their own positions move, each block ending with its own noise removal. Returns
    the reachable ``(F, L)`` sequences and their probabilities (they may include masks,
    or sequences outside ``states`` when the steps are few)."""
    states, probs = states[probs > 0], probs[probs > 0].double()
    L = states.shape[1]
    if blocks is None:
        blocks, alphas = [range(L)], [alphas]
    tokens = sorted(set(states.flatten().tolist()))
    options = torch.tensor(tokens + [mask_id])  # the value each code stands for
    partial = torch.tensor(list(itertools.product(range(len(options)), repeat=L)))
    values = options[partial]  # (P, L) ids
    masked = values == mask_id
    # a partial state no sequence fits has no posterior: the sampler must never reach it
    dead = ~((values[:, None] == states[None]) | masked[:, None]).all(-1).any(-1)
    post = torch.zeros(*values.shape, len(tokens), dtype=torch.float64)
    post[~dead] = masked_posterior(states, probs, values[~dead], mask_id, vocab_size)[..., options[:-1]]
    keep = torch.nn.functional.one_hot(partial, len(options)).double()
    fill = post.argmax(-1)  # the noise-removal token, as a code
    code = {tuple(row): i for i, row in enumerate(partial.tolist())}
    dist = torch.zeros(len(partial), dtype=torch.float64)
    dist[code[(len(tokens),) * L]] = 1.0

    def apply(step: torch.Tensor) -> torch.Tensor:
        kernel = torch.ones(len(partial), len(partial), dtype=torch.float64)
        for pos in range(L):
            kernel *= step[:, pos, partial[:, pos]]  # (P, P): to the next state's code at pos
        out = dist @ kernel
        if float(out[dead].sum()) > 0:
            raise ValueError("the ideal sampler reaches a partial sequence of probability 0 "
                             "(its posterior is undefined); give every sequence positive probability")
        return out

    for block, block_alphas in zip(blocks, alphas):
        moves = masked & torch.isin(torch.arange(L), torch.as_tensor(list(block)))[None]
        for a_t, a_s in zip(block_alphas[:-1].tolist(), block_alphas[1:].tolist()):
            u = (a_s - a_t) / (1 - a_t)
            # per position: the probability of each next code given the current partial state
            step = torch.cat([u * post, torch.full_like(post[..., :1], 1 - u)], -1)  # (P, L, K'+1)
            dist = apply(torch.where(moves[..., None], step, keep))
        if noise_removal:
            dist = apply(torch.where(moves[..., None], torch.nn.functional.one_hot(fill, len(options)).double(), keep))
    uniq, inverse = values.unique(dim=0, return_inverse=True)
    out = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, dist)
    return uniq[out > 0], out[out > 0]


# -- uniform-state diffusion ------------------------------------------------------------------


def _likelihood(states: torch.Tensor, z: torch.Tensor, alpha: float, vocab_size: int) -> torch.Tensor:
    """``q(z_t^l | x^l = s_l)`` for every state, ``(B, S, L)``."""
    return alpha * (z[:, None, :] == states[None]).double() + (1 - alpha) / vocab_size


def uniform_denoiser(states: torch.Tensor, probs: torch.Tensor, z: torch.Tensor, alpha: float,
                     vocab_size: int) -> torch.Tensor:
    """The exact ``x_theta`` of Duo's parameterisation, ``p(x^l | z_t^{-l})``, ``(B, L, K)``.

    Duo's step ``q(z_s | z_t, x_theta)`` multiplies ``x_theta`` by ``q(z_t^l | x)`` itself,
    so it is the true reverse marginal when ``x_theta`` is the prediction from the *other*
    positions (leave-one-out)."""
    lik = _likelihood(states, z, alpha, vocab_size)
    others = torch.stack([lik[..., [m for m in range(lik.shape[-1]) if m != pos]].prod(-1)
                          for pos in range(lik.shape[-1])], -1)  # (B, S, L)
    w = probs.double()[None, :, None] * others
    onehot = torch.nn.functional.one_hot(states, vocab_size).double()
    x_theta = (w[..., None] * onehot[None]).sum(1)
    return x_theta / x_theta.sum(-1, keepdim=True)


def uniform_posterior_marginals(states: torch.Tensor, probs: torch.Tensor, z: torch.Tensor,
                                alpha: float, vocab_size: int) -> torch.Tensor:
    """``p(x^l = k | z_t)`` under ``q(z_t | x) = prod_l Cat(alpha x^l + (1 - alpha) / K)``."""
    w = probs.double()[None] * _likelihood(states, z, alpha, vocab_size).prod(-1)  # (B, S)
    onehot = torch.nn.functional.one_hot(states, vocab_size).double()
    return (w[:, :, None, None] * onehot[None]).sum(1) / w.sum(-1)[:, None, None]


def uniform_ideal(states: torch.Tensor, probs: torch.Tensor, alphas: torch.Tensor, vocab_size: int,
                  tail: str = "ancestral") -> tuple[torch.Tensor, torch.Tensor]:
    """Distribution of the final sequences of the ideal uniform-state sampler on ``alphas``.

    Starts uniform over all ``K ** L`` sequences; each step ``alpha_t -> alpha_s`` draws
    every position from ``sum_x p(x^l = x | z_t) q(z_t | z_s) q(z_s | x) / q(z_t | x)``.
    The tail, at the last ``alpha``: ``"ancestral"`` draws ``x^l`` from ``p(x^l | z)``,
    ``"greedy"`` takes the argmax of :func:`uniform_denoiser`. Returns ``(F, L)``, ``(F,)``."""
    states, probs = states[probs > 0], probs[probs > 0].double()
    K, L = vocab_size, states.shape[1]
    z = torch.tensor(list(itertools.product(range(K), repeat=L)))  # (Z, L)
    eye = torch.eye(K, dtype=torch.float64)
    dist = torch.full((len(z),), 1.0 / len(z), dtype=torch.float64)

    def posterior(alpha: float) -> torch.Tensor:
        """``p(x^l | z)``, zero on states ``z`` no sequence explains (at ``alpha = 1``)."""
        post = uniform_posterior_marginals(states, probs, z, alpha, K)
        dead = post.isnan().flatten(1).any(-1)
        if float(dist[dead].sum()) > 0:
            raise ValueError("the ideal sampler reaches a noisy state of probability 0")
        return torch.nan_to_num(post, nan=0.0)

    for a_t, a_s in zip(alphas[:-1].tolist(), alphas[1:].tolist()):
        q_s = a_s * eye + (1 - a_s) / K  # [x, j] = q(z_s = j | x)
        q_ts = (a_t / a_s) * eye + (1 - a_t / a_s) / K  # [j, i] = q(z_t = i | z_s = j)
        q_t = a_t * eye + (1 - a_t) / K  # [x, i] = q(z_t = i | x)
        bridge = q_ts.T[:, None, :] * q_s[None] / q_t.T[:, :, None]  # [i, x, j] = q(z_s=j | z_t=i, x)
        post = posterior(a_t)  # (Z, L, K)
        step = torch.einsum("zlx,zlxj->zlj", post, bridge[z])  # (Z, L, K)
        kernel = torch.ones(len(z), len(z), dtype=torch.float64)
        for pos in range(L):
            kernel *= step[:, pos, z[:, pos]]
        dist = dist @ kernel
    a = float(alphas[-1])
    if tail == "greedy":
        final = uniform_denoiser(states, probs, z, a, K).argmax(-1)
        uniq, inverse = final.unique(dim=0, return_inverse=True)
        out = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, dist)
    elif tail == "ancestral":
        post = posterior(a)
        kernel = torch.ones(len(z), len(z), dtype=torch.float64)
        for pos in range(L):
            kernel *= post[:, pos, z[:, pos]]
        uniq, out = z, dist @ kernel
    else:
        raise ValueError(f"tail must be 'ancestral' or 'greedy', got {tail!r}")
    return uniq[out > 0], out[out > 0]


# -- goodness of fit --------------------------------------------------------------------------


def chi_square_pvalue(samples: torch.Tensor, support: torch.Tensor, probs: torch.Tensor,
                      min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value of the rows of ``samples`` against ``probs`` over ``support``.

    Cells expected fewer than ``min_expected`` times are pooled into one (the usual
    validity rule of the chi-square approximation); a sample outside ``support``, or in a
    cell of probability 0, gives 0."""
    index = {tuple(row): i for i, row in enumerate(support.tolist())}
    found = [index.get(tuple(row), -1) for row in samples.tolist()]
    if -1 in found:
        return 0.0
    counts = torch.bincount(torch.tensor(found), minlength=len(support)).double()
    expected = len(samples) * probs.double() / probs.double().sum()
    if float(counts[expected == 0].sum()) > 0:
        return 0.0  # a sample where probs is 0
    counts, expected = counts[expected > 0], expected[expected > 0]
    small = expected < min_expected
    if bool(small.any()):
        counts = torch.cat([counts[~small], counts[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
    if len(expected) < 2:
        return 1.0
    stat = float(((counts - expected) ** 2 / expected).sum())
    return float(torch.special.gammaincc(torch.tensor((len(expected) - 1) / 2.0, dtype=torch.float64),
                                         torch.tensor(stat / 2.0, dtype=torch.float64)))


def align(support: torch.Tensor, probs: torch.Tensor, onto: torch.Tensor) -> torch.Tensor:
    """``probs`` over ``support`` re-indexed onto the rows of ``onto`` (0 where absent)."""
    index = {tuple(row): i for i, row in enumerate(support.tolist())}
    return torch.tensor([float(probs[index[r]]) if r in index else 0.0 for r in map(tuple, onto.tolist())],
                        dtype=torch.float64)


def _upper_quantile(df: int, level: float) -> float:
    """The chi-square(df) value exceeded with probability ``level`` (bisection)."""
    lo, hi = 0.0, 10.0 * df + 100.0
    for _ in range(100):
        mid = (lo + hi) / 2
        tail = float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64),
                                             torch.tensor(mid / 2.0, dtype=torch.float64)))
        lo, hi = (mid, hi) if tail > level else (lo, mid)
    return hi


def samples_for_power(reference: torch.Tensor, wrong: torch.Tensor, level: float = 1e-3,
                      min_expected: float = 5.0) -> int:
    """Samples from ``reference`` at which :func:`chi_square_pvalue` against ``wrong`` (both
    over the same cells) falls below ``level`` with a three-sigma margin.

    With ``n`` samples (cells pooled as the test pools them) the statistic is about
    noncentral chi-square with ``df = cells - 1`` and ``lambda = n sum (p - q)^2 / q``:
    mean ``df + lambda``, variance ``2 (df + 2 lambda)``. This is the smallest ``n`` with
    ``mean - 3 sd`` above the critical value. Where ``wrong`` gives 0 to cells of mass
    ``m > 0`` one sample there rejects it, so ``n`` is where all are missed with
    probability ``level``: ``log(level) / log(1 - m)``."""
    p, q = reference.double() / reference.sum(), wrong.double() / wrong.sum()
    missed = float(p[q == 0].sum())
    if missed > 0:
        return 1 if missed >= 1 else math.ceil(math.log(level) / math.log1p(-missed))
    p, q = p[q > 0], q[q > 0]

    def rejects(n: int) -> bool:
        small = n * q < min_expected
        pp = torch.cat([p[~small], p[small].sum()[None]]) if bool(small.any()) else p
        qq = torch.cat([q[~small], q[small].sum()[None]]) if bool(small.any()) else q
        df = len(qq) - 1
        if df < 1:
            return False
        lam = n * float(((pp - qq) ** 2 / qq).sum())
        return df + lam - 3 * math.sqrt(2 * (df + 2 * lam)) > _upper_quantile(df, level)

    n = 1
    while not rejects(n):
        n *= 2
        if n > 2**40:
            raise ValueError("wrong is indistinguishable from reference")
    lo, hi = n // 2, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if rejects(mid) else (mid, hi)
    return hi


def assert_fits(samples: torch.Tensor, support: torch.Tensor, reference: torch.Tensor, *wrongs: torch.Tensor,
                level: float = 1e-3) -> None:
    """The check of an exactness test: ``samples`` fit ``reference`` (chi-square p above
    ``level``) and reject every ``wrong`` reference (p below it), with enough samples for
    that rejection to be expected (:func:`samples_for_power`), so the test has power."""
    fit = chi_square_pvalue(samples, support, reference)
    assert fit > level, f"samples do not fit the ideal sampler (p = {fit:.2e})"
    for wrong in wrongs:
        assert samples_for_power(reference, wrong, level) <= len(samples), "too few samples to reject a wrong reference"
        power = chi_square_pvalue(samples, support, wrong)
        assert power < level, f"a wrong reference was not rejected (p = {power:.2e})"
