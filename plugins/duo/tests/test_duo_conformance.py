"""The dlmbench conformance kit run against the installed ``duo`` plugin."""

from dlmbench.testing.conformance import ModelConformance


class TestDuoConformance(ModelConformance):
    model_name = "duo"
