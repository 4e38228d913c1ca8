"""The ``dlmbench`` entry point of the Duo plugin."""

import dlmbench

from dlmbench_duo.model import Duo
from dlmbench_duo.samplers import DuoAncestral, DuoGreedyTail


@dlmbench.hookimpl
def register_models(register):
    register(Duo)


@dlmbench.hookimpl
def register_samplers(register):
    register(DuoAncestral)
    register(DuoGreedyTail)
