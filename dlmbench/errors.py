"""Errors the CLI turns into one clear line and a distinct exit code."""

from __future__ import annotations


class DLMBenchError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(DLMBenchError):
    """A malformed config or option: names the field, the value and a fix."""

    exit_code = 2


class UnknownNameError(ConfigError):
    """An unknown model/sampler/metric/task name, with a did-you-mean."""


class CheckpointError(DLMBenchError):
    """A missing, corrupted or mismatched checkpoint."""

    exit_code = 3


class HubUnavailableError(DLMBenchError):
    """A Hugging Face Hub download was needed but the hub cannot be reached."""

    exit_code = 4
