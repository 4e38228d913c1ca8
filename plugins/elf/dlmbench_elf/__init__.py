"""ELF (Embedded Language Flows, Hu et al., arXiv 2605.10938) for dlmbench.

Modules, one concept each: ``config`` (every option and the presets), ``path`` (flow
path, time and scale distributions, x <-> v), ``encoder`` (T5 latents and the embedding
ablations), ``pretrain`` (masked-LM pretraining of a ``scratch`` encoder), ``denoiser``
(the transformer), ``model`` (the two-branch loss), ``samplers`` (ODE / SDE and the time
grid), ``plugin`` (the entry point). The reference code is ``lillian039/ELF`` (the
PyTorch port, branch ``pytorch_elf`` at ``b29d883``).
"""

from dlmbench_elf.config import ELFConfig
from dlmbench_elf.model import ELF
from dlmbench_elf.samplers import ODESampler, SDESampler

__all__ = ["ELF", "ELFConfig", "ODESampler", "SDESampler"]
__version__ = "0.1.0"
