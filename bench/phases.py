"""The phases of one quick two-hop config, timed live, sequential and stacked side by side.

:class:`PhaseClock` is a ``progress`` (toymodels/progress.py) that times the protocol from
the bars it opens, so the measured code is the experiment's own ``run_two_hop``, unchanged.
Each slice of wall and CPU time between two progress events goes to one phase:

- ``lora_training``: inside a LoRA's own bar (sequential), and from opening a split's
  protocol bar to its first ``scoring base`` (the stacked engine trains every LoRA there;
  sequentially only the joint data are concatenated there);
- ``scoring``: from ``scoring NAME`` to the protocol bar's next update;
- ``merges``: from the update before ``scoring <method>/<library>`` to it (building the
  merged or routed model: weighted sums, TIES, Arrow's SVDs, LoraHub's search);
- ``base_training``: the base model's bars;
- ``other``: the rest (expert data, the family, bookkeeping between the protocol's steps).

:func:`measure` trains the base model live, then runs every familiarity split twice,
``stacked=False`` and ``stacked=True``, alternating which goes first (F: sequential first,
H: stacked first, ...), so that load changes hit both; it reports both totals and how far
the two runs' outputs differ (the same seeds: equal up to float rounding, except where a
rounding difference moves an early stop).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Iterator

PHASES = ("base_training", "lora_training", "merges", "scoring", "other")


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class PhaseClock:
    """A ``progress`` that sums wall and CPU seconds per phase (module docstring)."""

    def __init__(self, methods: tuple[str, ...]):
        self.methods = set(methods)
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self.phase, self.start = "other", _now()
        self.pending = False  # after a protocol update: merges if a method is scored next, else other

    def switch(self, phase: str, pending_to: str = "other") -> None:
        wall, cpu = _now()
        spent = pending_to if self.pending else self.phase
        self.wall[spent] += wall - self.start[0]
        self.cpu[spent] += cpu - self.start[1]
        self.phase, self.start, self.pending = phase, (wall, cpu), False

    def resume(self) -> None:
        """Start counting again after a pause (the time since the last event is not this run's)."""
        self.phase, self.start, self.pending = "other", _now(), False

    def __call__(self, desc: str = "", total: int | None = None) -> "_Bar":
        title = desc.startswith("split ")
        if desc.startswith("base model"):
            self.switch("base_training")
        elif title or not desc.startswith("base"):
            self.switch("lora_training")
        return _Bar(self, title)

    def totals(self) -> dict:
        return {"wall_s": dict(self.wall), "cpu_s": dict(self.cpu),
                "total_wall_s": sum(self.wall.values()), "total_cpu_s": sum(self.cpu.values())}


class _Bar:
    def __init__(self, clock: PhaseClock, title: bool):
        self.clock, self.title = clock, title

    def update(self, n: int = 1) -> None:
        if self.title:
            self.clock.switch("other")
            self.clock.pending = True

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        if self.title and s.startswith("scoring "):
            method = s[len("scoring "):].split("/")[0]
            self.clock.switch("scoring", pending_to="merges" if method in self.clock.methods else "other")

    def close(self) -> None:
        self.clock.switch("other")


def numbers(tree: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Every numeric leaf of a JSON-like result, with its path."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from numbers(value, f"{path}/{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from numbers(value, f"{path}/{i}")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, float(tree)


def agreement(a: dict, b: dict) -> dict:
    """How far two runs' scores and LoRA step counts differ (``seconds`` leaves ignored)."""
    left = {p: v for p, v in numbers(a) if not p.endswith("/seconds")}
    right = {p: v for p, v in numbers(b) if not p.endswith("/seconds")}
    common = sorted(set(left) & set(right))
    diffs = {p: 0.0 if math.isnan(left[p]) and math.isnan(right[p]) else abs(left[p] - right[p]) for p in common}
    diffs = {p: math.inf if math.isnan(d) else d for p, d in diffs.items()}  # NaN on one side only
    steps = [p for p in common if p.endswith("/steps")]
    return {"leaves": len(common), "unmatched_leaves": len(set(left) ^ set(right)),
            "max_abs_diff": max(diffs.values(), default=0.0),
            "leaves_differing_over_1e-4": sum(d > 1e-4 for d in diffs.values()),
            "lora_runs": len(steps), "lora_runs_with_other_steps": sum(diffs[p] > 0 for p in steps)}


def measure(cfg, seed: int, device: str) -> dict:
    """Base training, then each split sequential and stacked (module docstring)."""
    from toymodels.pipeline import run_two_hop, train_base

    clock = PhaseClock(cfg.methods)
    base = train_base(cfg.base, seed, device, clock)
    clock.switch("other")
    base_time = {"wall_s": clock.wall["base_training"], "cpu_s": clock.cpu["base_training"]}
    modes = {"sequential": PhaseClock(cfg.methods), "stacked": PhaseClock(cfg.methods)}
    outputs: dict[str, dict] = {"sequential": {}, "stacked": {}}
    for i, fam in enumerate(cfg.familiarities):
        one = dataclasses.replace(cfg, familiarities=(fam,))
        for mode in (("sequential", "stacked") if i % 2 == 0 else ("stacked", "sequential")):
            clock = modes[mode]
            clock.resume()
            out = run_two_hop(one, seed, device, clock, base=base, stacked=mode == "stacked")
            clock.switch("other")
            outputs[mode][fam] = out["splits"][fam]
    return {"seed": seed, "familiarities": list(cfg.familiarities), "base_training": base_time,
            "base_steps": base.result.steps,
            "modes": {m: c.totals() for m, c in modes.items()},
            "agreement": agreement(outputs["sequential"], outputs["stacked"])}


def quick_config():
    """The cached quick two_hop_reuse config measured: chain-of-thought, condition main, seed 0."""
    from analysis.experiments.two_hop_reuse import grid

    return next(c for c in grid("quick") if c.fmt == "cot" and c.condition == "main" and c.seed == 0)


def phase_table(live: dict) -> tuple[tuple[str, ...], list[tuple]]:
    """Per phase: wall and CPU seconds of both modes and the sequential/stacked ratio."""
    seq, stk = live["modes"]["sequential"], live["modes"]["stacked"]
    head = ("phase", "seq wall s", "seq CPU s", "share", "stacked wall s", "stacked CPU s", "wall ratio", "CPU ratio")
    base = live["base_training"]
    rows = [("base_training (once)", round(base["wall_s"], 1), round(base["cpu_s"], 1), "-", "-", "-", "-", "-")]
    ratio = lambda a, b: f"{a / b:.2f}x" if b > 0.05 else "-"  # noqa: E731
    for phase in PHASES[1:]:
        w, c = seq["wall_s"][phase], seq["cpu_s"][phase]
        rows.append((phase, round(w, 1), round(c, 1), f"{w / seq['total_wall_s']:.0%}",
                     round(stk["wall_s"][phase], 1), round(stk["cpu_s"][phase], 1),
                     ratio(w, stk["wall_s"][phase]), ratio(c, stk["cpu_s"][phase])))
    rows.append(("total (splits)", round(seq["total_wall_s"], 1), round(seq["total_cpu_s"], 1), "100%",
                 round(stk["total_wall_s"], 1), round(stk["total_cpu_s"], 1),
                 ratio(seq["total_wall_s"], stk["total_wall_s"]), ratio(seq["total_cpu_s"], stk["total_cpu_s"])))
    return head, rows


def rows(live: dict, label: str):
    """Bench rows: the stacked protocol vs the sequential one, whole splits and LoRA phase."""
    from bench.measure import Row

    seq, stk = live["modes"]["sequential"], live["modes"]["stacked"]
    note = f"{label}; every split run both ways in one process, alternating which goes first"
    return [Row("protocol_stacked_wall", 3600 / stk["total_wall_s"], 3600 / seq["total_wall_s"], "configs/hour",
                None, f"{note}; wall time of F/H/R (base excluded)"),
            Row("protocol_stacked_cpu", 3600 / stk["total_cpu_s"], 3600 / seq["total_cpu_s"], "configs/CPU-hour",
                None, f"{note}; process CPU time of F/H/R"),
            Row("protocol_stacked_lora_phase", 1 / stk["wall_s"]["lora_training"],
                1 / seq["wall_s"]["lora_training"], "1/s", None, f"{note}; the LoRA training phase only")]
