"""The benchmark registry: name -> ``fn(device, quick) -> list[Row]``.

Each benchmark is a module of its own (:mod:`bench.toy_step`, :mod:`bench.stacked`,
:mod:`bench.hf_lora`, :mod:`bench.svd`, :mod:`bench.theory_rate`); a benchmark that cannot
run here raises :class:`bench.measure.Skipped` and the suite records why.
"""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from bench import NAMES, hf_lora, stacked, svd, theory_rate, toy_step
from bench.measure import Row, Skipped


def benchmarks(pretrained_cache: Path) -> dict[str, Callable[[torch.device, bool], list[Row]]]:
    table = {
        "toy_step": toy_step.toy_step,
        "stacked_adapters": stacked.stacked_adapters,
        "stacked_bases": stacked.stacked_bases,
        "hf_lora_tiny": hf_lora.tiny,
        "hf_lora_smollm2": partial(hf_lora.smollm2, cache_dir=pretrained_cache),
        "svd": svd.svd,
        "t2": theory_rate.t2,
    }
    assert tuple(table) == NAMES, "bench.NAMES lists the benchmarks in run order"
    return table


def run_suite(names: list[str], device: torch.device, quick: bool, pretrained_cache: Path,
              progress: Callable[[str], None] = lambda line: None) -> dict:
    """Run ``names`` in order: ``{"rows": [Row], "skipped": {name: reason}, "seconds": {name: s}}``."""
    table = benchmarks(pretrained_cache)
    out = {"rows": [], "skipped": {}, "seconds": {}}
    for name in names:
        progress(f"{name} ...")
        start = time.perf_counter()
        try:
            rows = table[name](device, quick)
        except Skipped as exc:
            out["skipped"][name] = str(exc)
            progress(f"{name}: skipped ({exc})")
            continue
        finally:
            out["seconds"][name] = round(time.perf_counter() - start, 2)
        out["rows"] += rows
        progress(f"{name}: {out['seconds'][name]:.1f} s")
    return out
