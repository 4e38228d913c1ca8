"""The core's conformance kit run on ELF (tiny preset, both unconditional and conditional)."""

from dlmbench.testing.conformance import ModelConformance


class TestELFConformance(ModelConformance):
    model_name = "elf"
