"""Experiment registry: what each experiment sweeps, how one configuration runs, what it draws.

An :class:`Experiment` is data:

- ``grid(profile) -> list[Config]``: the frozen configs of a sweep ("quick" for CPU
  minutes, "paper" for a GPU), written as a comprehension over ``dataclasses.replace``;
- ``run(config, device, results) -> dict``: module-level (worker processes import it by
  name): trains/measures one config and returns JSON-able metrics, subsampled curves
  and the theory prediction where one exists. ``results`` is the results folder, passed
  explicitly by the sweep: the only disk it touches is the shared model caches there
  (``<results>/models/`` base models, ``<results>/pretrained/`` converted models); it
  never writes the terminal; the sweep caches what it returns under ``config.key()``;
- ``figures``: ``{figure name: fn(results) -> (Figure, plotted data dict)}``;
- ``claims``: :class:`ClaimMeasure` rows, each a claim plus how to measure it per seed
  from the results; the report turns them into verdicts.

Plug in an experiment by calling :func:`register` at import time of its module and adding
the module to :data:`EXPERIMENT_MODULES` (the same pattern as ``theory.all_claims``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from analysis.errors import UsageError
from analysis.stats import UNBOUNDED
from analysis.verdict import Claim

PROFILES = ("quick", "paper")

# Modules that register experiments when imported. Add one line per experiment module.
EXPERIMENT_MODULES: list[str] = [
    "analysis.selftest",  # "_selftest": the tiny dummy experiment the tests use (hidden)
    "analysis.experiments.rank_depth",  # "rank_depth": LoRA rank x depth, capacity vs RANK-1 and reuse
    "analysis.experiments.two_hop_reuse",  # "two_hop_reuse": merged / routed one-hop experts on two-hop questions
    "analysis.experiments.mechanism",  # "mechanism": bridge decodability, T2 key overlaps, Arrow routing per layer
    "analysis.experiments.pretrained_two_hop",  # "pretrained_two_hop": natural-language two-hop on SmolLM2
    "analysis.experiments.qa_reuse",  # "qa_reuse": history/geography QA reuse on SmolLM2 (F/H/R/OOD)
    "analysis.experiments.math_reuse",  # "math_reuse": toy math facts + procedure LoRAs, shared template or not
    "analysis.experiments.code_reuse",  # "code_reuse": toy cross-lingual code, semantics + syntax adapters
    "analysis.experiments.pretrained_code",  # "pretrained_code": can SmolLM2 write the code base task (gate)
    "analysis.experiments.pretrained_peft",  # "pretrained_peft": PEFT's LoRA vs ours on the pretrained two-hop protocol
    "analysis.experiments.pretrained_math",  # "pretrained_math": English math problems on SmolLM2, TEMPLATE-1-pre
]


class Result(NamedTuple):
    """One finished grid point as the figures and claims see it."""

    key: str
    config: Any  # the frozen Config
    result: dict[str, Any]  # what Experiment.run returned (after a JSON round trip)


FigureFn = Callable[[list[Result]], tuple[Any, dict[str, Any]]]


@dataclass(frozen=True)
class Ceiling:
    """What a claim is read against: ``per_seed(results)`` is, per seed, the score of the model
    that should do the task at all (``name`` says which model and metric, e.g. "joint/hops
    composed accuracy"); when its mean over seeds is under ``threshold`` the claim's verdict is
    "not testable" (a reuse failure says nothing when nothing that fine-tunes succeeds either)."""

    name: str
    per_seed: Callable[[list[Result]], Sequence[float]]
    threshold: float


@dataclass(frozen=True)
class ClaimMeasure:
    """A claim and how to measure it: ``per_seed(results)`` returns one number per seed
    (e.g. merged minus control accuracy, paired by seed); ``figures`` are the figures that
    plot that measure, linked beside it (none: the report says no figure plots it);
    ``detail(results)``, if given, is one line of the numbers behind the measure that the
    report prints with it (e.g. facts recalled per rank behind a maximum over ranks).

    ``bounds``: the range the measure can take (:data:`analysis.stats.ACCURACY`,
    ``DIFFERENCE``, or ``UNBOUNDED``, the default); the CI lies within it. ``ceiling``: see
    :class:`Ceiling` (none: the report says no ceiling is stated). ``questions(results)``:
    composed questions per split behind the measure, ``{split: count}`` (none: read from the
    results' ``splits[*]["n_composed"]``, else the configs). ``recipe(result)``: the name of
    the fine-tune recipe of a result, where the grid varies it; the report then gives one
    verdict per recipe and whether the claim holds in all of them (:func:`analysis.verdict.robust`).
    ``needs(results)``: None when the results hold what the measure reads, else one sentence
    saying what is missing and the command that produces it; the report then lists the claim
    as "not measured" instead of judging it (e.g. a split the grid of this profile lacks)."""

    claim: Claim
    per_seed: Callable[[list[Result]], Sequence[float]]
    figures: tuple[str, ...] = ()
    detail: Callable[[list[Result]], str] | None = None
    bounds: tuple[float, float] = UNBOUNDED
    ceiling: Ceiling | None = None
    questions: Callable[[list[Result]], Mapping[str, int]] | None = None
    recipe: Callable[[Result], str] | None = None
    needs: Callable[[list[Result]], str | None] | None = None

    def __post_init__(self):
        lowest, highest = self.bounds
        if not lowest < self.claim.margin < highest:
            raise ValueError(f"claim {self.claim.id}: margin {self.claim.margin:g} must lie strictly inside the "
                             f"measure's bounds {self.bounds}, or the verdict is decided before any data")


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str  # one line, shown by ``lora-limits list``
    grid: Callable[[str], list[Any]]
    run: Callable[[Any, str, Path], dict[str, Any]]  # run(config, device, results)
    figures: dict[str, FigureFn] = field(default_factory=dict)
    claims: tuple[ClaimMeasure, ...] = ()
    hidden: bool = False  # hidden experiments (the self-test) are left out of ``list`` and the report
    # profiles in which ``lora-limits reproduce`` runs it (``run`` takes any profile): an
    # experiment too slow for the default CPU reproduction lists ("paper",) only
    reproduce_profiles: tuple[str, ...] = PROFILES
    # checked before any config runs; raises UsageError naming the fix (e.g. a missing extra)
    preflight: Callable[[Any], None] | None = None
    # prints the experiment's terminal tables from finished results (run/reproduce call it)
    summary: Callable[[list[Result]], None] | None = None

    def configs(self, profile: str) -> list[Any]:
        """The grid for ``profile``; an unknown profile is a :class:`UsageError`."""
        if profile not in PROFILES:
            raise UsageError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
        return list(self.grid(profile))


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment``; a second experiment under the same name is an error."""
    if "<" in experiment.run.__qualname__:  # a lambda or nested function cannot be pickled by name
        raise ValueError(f"experiment {experiment.name!r}: run must be a module-level function so that "
                         f"worker processes can import it, not {experiment.run.__qualname__}")
    if bad := [p for p in experiment.reproduce_profiles if p not in PROFILES]:
        raise ValueError(f"experiment {experiment.name!r}: reproduce_profiles has {bad}; valid: {', '.join(PROFILES)}")
    old = _REGISTRY.get(experiment.name)
    if old is not None and old is not experiment:
        raise ValueError(f"experiment {experiment.name!r} registered twice")
    for measure in experiment.claims:
        unknown = [f for f in measure.figures if f not in experiment.figures]
        if unknown:
            raise ValueError(f"experiment {experiment.name!r}: claim {measure.claim.id} links "
                             f"unknown figure(s) {', '.join(unknown)}")
    for other in _REGISTRY.values():
        shared = set(other.figures) & set(experiment.figures) if other.name != experiment.name else set()
        if shared:
            raise ValueError(f"experiment {experiment.name!r}: figure name(s) {', '.join(sorted(shared))} "
                             f"already used by {other.name!r} (figures share one folder)")
    _REGISTRY[experiment.name] = experiment
    return experiment


def experiments(include_hidden: bool = False) -> dict[str, Experiment]:
    """All registered experiments in registration order (imports :data:`EXPERIMENT_MODULES`)."""
    for module in EXPERIMENT_MODULES:
        importlib.import_module(module)
    return {n: e for n, e in _REGISTRY.items() if include_hidden or not e.hidden}


def get(name: str) -> Experiment:
    """The experiment called ``name``; an unknown name is a :class:`UsageError` listing valid ones."""
    known = experiments(include_hidden=True)
    if name not in known:
        visible = [n for n, e in known.items() if not e.hidden]
        raise UsageError(f"unknown experiment {name!r}; valid experiments: "
                         f"{', '.join(visible) or '(none registered yet)'}")
    return known[name]
