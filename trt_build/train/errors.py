"""Why ``imgserve train`` refuses to start: its input or settings cannot make a model. Nothing
has been written when one of these is raised (the command exits with code 2)."""

from __future__ import annotations


class TrainingRefused(ValueError):
    """The request cannot be trained as given."""


class TrainingDataError(TrainingRefused):
    """The data folder cannot be trained on."""
