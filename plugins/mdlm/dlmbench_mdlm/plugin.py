"""The ``dlmbench`` entry point of the MDLM plugin."""

import dlmbench

from dlmbench_mdlm.model import MDLM
from dlmbench_mdlm.samplers import MDLMDDPM, MDLMDDPMCache


@dlmbench.hookimpl
def register_models(register):
    register(MDLM)


@dlmbench.hookimpl
def register_samplers(register):
    register(MDLMDDPM)
    register(MDLMDDPMCache)
