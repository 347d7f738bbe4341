"""Toy-model experiments (PAPER.md section 2), one module each; each registers itself with
:func:`analysis.registry.register` when imported (listed in ``registry.EXPERIMENT_MODULES``).

The base model is the expensive part of every experiment, so run functions never train one
themselves: :func:`base_model` loads it from the shared model cache
(:func:`analysis.basemodels.cached_base`, ``<results>/models/``, where ``results`` is the
folder the sweep passes to ``run(config, device, results)``), training it the first time. Experiments that use the same
base config and seed therefore share one trained model.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from toymodels.pipeline import BaseConfig, BaseRun


def base_model(cfg: "BaseConfig", seed: int, device: str, results: Path | str) -> "BaseRun":
    """The pretrained base model of ``(cfg, seed)`` from the model cache of the results folder
    ``results``, shared by every experiment and config."""
    from analysis.basemodels import cached_base
    from analysis.progress import current

    return cached_base(cfg, seed, device, results, progress=current())
