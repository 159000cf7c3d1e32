"""Exceptions users can catch: each message names the problem and the fix."""


class RoSAError(Exception):
    """Base class of every error raised on purpose by rosa."""


class RoSAConfigError(RoSAError, ValueError):
    """A configuration value is outside its valid range."""


class UnsupportedModelError(RoSAError):
    """The base model cannot carry RoAE (no RoPE, unknown layout, ...)."""


class AdapterLoadError(RoSAError):
    """A saved adapter is missing, corrupted, foreign, or made for another base model."""


class DataError(RoSAError, ValueError):
    """A data file or dataset name is missing, malformed, or does not match its published checksum."""
