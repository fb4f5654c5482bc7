"""The one exception family the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class SteerlabError(ValueError):
    """Bad input or an impossible request, explained in one sentence."""


class ModelLoadError(SteerlabError):
    """A model spec could not be resolved or loaded, or an object could not be wrapped."""


class VectorFileError(SteerlabError):
    """A file or Hub repository is not a readable steering vector, or does not fit the model."""
