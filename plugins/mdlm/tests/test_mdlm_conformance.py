"""The dlmbench conformance kit run against the installed ``mdlm`` plugin."""

from dlmbench.testing.conformance import ModelConformance


class TestMDLMConformance(ModelConformance):
    model_name = "mdlm"


class TestMDLMTimeConditionedConformance(ModelConformance):
    """The same checks with time conditioning on (the cache then switches itself off)."""

    model_name = "mdlm"
    options = {"time_conditioning": True}
