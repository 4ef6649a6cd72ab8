"""Callbacks around each block of the block-by-block runner (``calibration.sequential``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass
class BlockHooks:
    """Callbacks around each block of the block-by-block runner.

    Attributes:
        enter: ``enter(name, block)`` before the block first runs (e.g. load its weights).
        exit: ``exit(name, block)`` once the block is done (its outputs computed, its layers
            handed to ``done``): e.g. save what it produced and drop its weights.
    """

    enter: Callable[[str, nn.Module], None] | None = None
    exit: Callable[[str, nn.Module], None] | None = None
