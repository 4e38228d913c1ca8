"""MDLM for dlmbench ("Simple and Effective Masked Diffusion Language Models", Sahoo et al.,
NeurIPS 2024, arXiv 2406.07524).

Registers the model ``mdlm`` and its samplers ``ddpm`` and ``ddpm_cache`` (default).
:func:`load_official` loads the released ``kuleshov-group/mdlm-owt`` weights.
"""

from dlmbench_mdlm.model import MDLM, MDLMConfig, subs_log_probs
from dlmbench_mdlm.official import gpt2_spec, load_official
from dlmbench_mdlm.samplers import MDLMDDPM, MDLMDDPMCache

__all__ = ["MDLM", "MDLMConfig", "MDLMDDPM", "MDLMDDPMCache", "gpt2_spec", "load_official", "subs_log_probs"]
