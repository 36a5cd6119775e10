"""The errors every command reports as one line with its own exit code (cli.run_reporting_errors).

Kept free of heavy imports: `vitpose-scale X --help` and argument errors never load torch.
"""
from __future__ import annotations


class InputError(ValueError):
    """A command's input (an image, a video, a boxes file, a detector, an output path) cannot be used; exit 2."""


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit the model; exit 4."""
