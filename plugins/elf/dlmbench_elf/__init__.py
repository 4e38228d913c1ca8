"""ELF (Embedded Language Flows, arXiv 2605.10938) for dlmbench.

Modules, one concept each: ``path`` (flow path, time and scale distributions, x <-> v),
``encoder`` (T5 latents and the embedding ablations), ``denoiser`` (the transformer),
``model`` (config and the two-branch loss), ``samplers`` (ODE / SDE and the time grid),
``plugin`` (the entry point). The reference is /work/shared/reference/elf.md.
"""

from dlmbench_elf.model import ELF, ELFConfig
from dlmbench_elf.samplers import ODESampler, SDESampler

__all__ = ["ELF", "ELFConfig", "ODESampler", "SDESampler"]
__version__ = "0.1.0"
