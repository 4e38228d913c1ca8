"""Duo for dlmbench ("The Diffusion Duality", Sahoo et al., ICML 2025, arXiv 2506.10892).

Registers the model ``duo`` and its samplers ``ancestral`` (default) and ``greedy_tail``.
:func:`load_official` loads the released ``s-sahoo/duo`` / ``s-sahoo/duo-distilled`` weights.
"""

from dlmbench_duo.duality import DualityTable, duality_alpha_exact, duality_table
from dlmbench_duo.model import Duo, DuoConfig, rb_nelbo_per_token, uniform_posterior
from dlmbench_duo.official import gpt2_spec, load_official
from dlmbench_duo.samplers import DuoAncestral, DuoGreedyTail

__all__ = [
    "DualityTable",
    "Duo",
    "DuoAncestral",
    "DuoConfig",
    "DuoGreedyTail",
    "duality_alpha_exact",
    "duality_table",
    "gpt2_spec",
    "load_official",
    "rb_nelbo_per_token",
    "uniform_posterior",
]
