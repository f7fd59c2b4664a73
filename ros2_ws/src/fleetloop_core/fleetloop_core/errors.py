"""One error family for the core package; every message names what was wrong and where."""

from __future__ import annotations


class FleetLoopError(Exception):
    """Base of every error FleetLoop raises on purpose."""


class ConfigError(FleetLoopError):
    """A configuration file or value is invalid (the message names file, key and value)."""


class DatasetError(FleetLoopError):
    """A data set is missing or unreadable."""


class ModelError(FleetLoopError):
    """A model file or manifest is missing, corrupt or inconsistent; nothing was loaded."""


class InputError(FleetLoopError):
    """An input (image, tensor) does not match what the model expects."""
