"""Errors a user can cause and fix; the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class RobustlabError(ValueError):
    """A user mistake (bad argument, bad input, bad file): the message names the problem and the fix."""


class CheckpointError(RobustlabError):
    """A checkpoint is missing, corrupt, or does not fit the model."""
