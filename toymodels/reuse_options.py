"""The options of the reuse methods (:data:`toymodels.reuse.METHODS`), in one config, and
the keyword arguments each method gets from it: :func:`method_options`, the one place every
experiment (toy or pretrained) turns a :class:`ReuseOptions` into ``METHODS[name](**options)``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from toymodels.config import Config, check_fields


@dataclass(frozen=True)
class ReuseOptions(Config):
    """Options of the reuse methods (``reuse.METHODS``). LoraHub's weight search sees the
    first ``lorahub_shots`` composed questions; its ``composed`` score excludes them."""

    svd_rank: int | None = None  # None: the experts' LoRA rank
    ties_density: float = 0.2
    dare_drop: float = 0.5
    arrow_top_k: int = 1
    arrow_temperature: float = 1.0
    lorahub_shots: int = 2
    lorahub_budget: int = 40

    def __post_init__(self):
        ok = {"svd_rank": self.svd_rank is None or self.svd_rank >= 1,
              "ties_density": 0 < self.ties_density <= 1, "dare_drop": 0 <= self.dare_drop < 1,
              "arrow_top_k": self.arrow_top_k >= 1, "arrow_temperature": self.arrow_temperature > 0,
              "lorahub_shots": self.lorahub_shots >= 1, "lorahub_budget": self.lorahub_budget >= 1}
        allowed = {"svd_rank": ">= 1 or None", "ties_density": "in (0, 1]", "dare_drop": "in [0, 1)",
                   "arrow_temperature": "> 0"}
        check_fields("reuse", self, {name: (good, allowed.get(name, ">= 1")) for name, good in ok.items()})


def method_options(method: str, cfg: Any, n_adapters: int, gen: torch.Generator | None = None,
                   rng: np.random.Generator | None = None,
                   loss_fn: Callable[[torch.nn.Module], float] | None = None) -> dict:
    """The keyword options of ``METHODS[method]`` set by ``cfg.reuse`` (``cfg``: any config
    with ``reuse`` and ``lora``); ``dare`` needs ``gen``, ``lorahub`` needs ``rng`` and a
    few-shot ``loss_fn``."""
    opts = cfg.reuse
    if method.startswith("peft_"):  # PEFT's names: density = share kept, svd_rank defaults like ours
        kind = method.removeprefix("peft_")
        dare = {"density": 1.0 - opts.dare_drop, "generator": gen} if kind.startswith("dare") else {}
        prune = {"density": opts.ties_density} if kind.startswith(("ties", "magnitude")) else {}
        return {**dare, **prune, **({"svd_rank": opts.svd_rank or cfg.lora.rank} if kind.endswith("svd") else {})}
    return {
        "svd": {"rank": opts.svd_rank or cfg.lora.rank},
        "ties": {"density": opts.ties_density},
        "dare": {"drop_rate": opts.dare_drop, "generator": gen},
        "arrow": {"top_k": min(opts.arrow_top_k, n_adapters), "temperature": opts.arrow_temperature},
        "lorahub": {"loss_fn": loss_fn, "rng": rng, "budget": opts.lorahub_budget},
    }.get(method, {})
