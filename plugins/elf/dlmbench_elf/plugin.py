"""dlmbench entry point of the ELF plugin: one model (``elf``) and its samplers (``sde``, ``ode``)."""

from __future__ import annotations

import dlmbench
from dlmbench_elf.model import ELF
from dlmbench_elf.samplers import ODESampler, SDESampler


@dlmbench.hookimpl
def register_models(register):
    register(ELF)


@dlmbench.hookimpl
def register_samplers(register):
    register(SDESampler)
    register(ODESampler)
