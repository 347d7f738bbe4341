"""How the bench measures: result rows, interleaved timing, peak memory, matmul peak.

Every speed number is a ratio of two things measured side by side in the same run, called
in turn (A, B, A, B, ...) so that a change in machine load hits both alike; each side's
time is the median of its calls. A row's ``target`` applies to its ``ratio``.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


class Skipped(Exception):
    """A benchmark that cannot run here (a missing extra or model); the message says why."""


@dataclass(frozen=True)
class Row:
    """One measurement: ``ratio = value / reference``; ``target = (op, threshold)`` with op
    ``">="`` or ``"<="`` applies to the ratio (None: no target)."""

    name: str
    value: float
    reference: float | None
    unit: str
    target: tuple[str, float] | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.reference == 0:
            return None
        return self.value / self.reference

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None or math.isnan(self.ratio):
            return None
        op, threshold = self.target
        return self.ratio >= threshold if op == ">=" else self.ratio <= threshold

    def as_json(self, full: bool = False) -> dict:
        out = {"name": self.name, "value": self.value, "reference": self.reference, "ratio": self.ratio,
               "target": None if self.target is None else f"{self.target[0]} {self.target[1]:g}", "met": self.met}
        return out | ({"unit": self.unit, "note": self.note} if full else {})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                warmup: bool = True) -> dict[str, float]:
    """Median seconds per call of each function, called in turn ``repeats`` times (after one
    untimed warm-up call each unless ``warmup`` is False)."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul(n: int, device: torch.device) -> tuple[Callable[[], object], float]:
    """A dense fp32 ``n x n`` matmul and its FLOPs: the machine's peak, measured beside the
    thing it normalises."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
    return (lambda: a @ b), 2.0 * n ** 3


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during ``fn()`` above what was allocated before it. CUDA:
    ``max_memory_allocated``; CPU: the running sum of the allocations and frees that the
    torch profiler records (tensor memory only, not Python objects)."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak
