"""Reading ``two_hop_reuse`` results: which results, which models, which metric, per seed.

The claims (:mod:`analysis.experiments.two_hop_claims`) and the figures
(:mod:`analysis.figures.two_hop`, :mod:`analysis.figures.two_hop_metrics`) read every number
through these functions, so that a claim and the figure beside it cannot disagree on what
"composed" or "retention" means. The metric names are the ones every scored model dict holds
(issue 12 item 1, :mod:`toymodels.scoring`):

- ``composed``: exact match of the final answer; ``broadcast``: the other-subject control;
- ``margin`` / ``right`` / ``wrong``: the specificity on the true composed prompts,
  P(right new answer C_i) - mean P(another question's new answer C_j) (teacher forced at the
  final answer position: in CoT given the gold bridge B_i);
- ``retention``: exact match on the one-hop facts the composition needs (AB's and BC's),
  mean of the two, after the merge or route;
- conditional composition (:func:`conditional`): composed accuracy over the questions whose
  two hops the same model answers, pooled as (right, n).
"""
from __future__ import annotations

from typing import Callable, Iterable

from analysis.registry import Result
from toymodels.reuse import DATA_FREE  # the claims are about the data-free methods

FORMATS = ("latent", "cot")
HOPS = ("AB", "BC")  # the one-hop experts a composed question needs
METRICS = ("composed", "broadcast", "margin", "right", "wrong", "retention")


def select(results: list[Result], fmt: str | None = None, condition: str = "main") -> list[Result]:
    return [r for r in results if r.config.condition == condition and (fmt is None or r.config.fmt == fmt)]


def data_free(results: list[Result]) -> list[str]:
    """The data-free reuse methods present in ``results``."""
    return [m for m in DATA_FREE if results and m in results[0].config.pipeline.methods]


def splits_of(results: list[Result]) -> list[str]:
    """The familiarity splits present in any of ``results``, in first-seen order."""
    out: list[str] = []
    for r in results:
        out += [f for f in r.result["splits"] if f not in out]
    return out


def score(scores: dict, what: str) -> float:
    """One metric (:data:`METRICS`) of one model's scores on one split."""
    if what == "composed":
        return scores["composed"]
    if what == "broadcast":
        return scores["broadcast"]["composed"]
    if what in ("margin", "right", "wrong"):
        return scores["specificity"][what]
    if what == "retention":
        return sum(scores["facts"][h] for h in HOPS) / len(HOPS)
    raise ValueError(f"metric {what!r}: must be one of {', '.join(METRICS)}")


def model_value(r: Result, model: str, what: str = "composed", familiarities: Iterable[str] | None = None) -> float:
    """One metric of one model, mean over the familiarity splits (all of the result's, or those named)."""
    splits = [s for f, s in r.result["splits"].items() if familiarities is None or f in familiarities]
    if not splits:
        raise ValueError(f"result {r.key} has none of the splits {list(familiarities or [])}")
    return sum(score(s["models"][model], what) for s in splits) / len(splits)


def conditional(r: Result, model: str, familiarities: Iterable[str] | None = None) -> tuple[float, int]:
    """``(right, n)``: composed questions answered among the ``n`` whose two hops the model
    answers, pooled over the splits (``conditional = {"composed": right / n, "n": n}`` per split)."""
    right, n = 0.0, 0
    for f, s in r.result["splits"].items():
        if familiarities is None or f in familiarities:
            c = s["models"][model]["conditional"]
            right, n = right + (c["composed"] or 0.0) * c["n"], n + c["n"]
    return right, n


def by_seed(results: list[Result], value: Callable[[Result], float]) -> dict[int, float]:
    """Per seed, the mean of ``value`` over the seed's results (e.g. over formats)."""
    seeds: dict[int, list[float]] = {}
    for r in results:
        seeds.setdefault(r.config.seed, []).append(value(r))
    return {s: sum(v) / len(v) for s, v in sorted(seeds.items())}


def method_mean(r: Result, library: str, familiarities: Iterable[str] | None = None, what: str = "composed") -> float:
    """A metric of the data-free methods on ``library``, mean over the methods."""
    methods = data_free([r])
    return sum(model_value(r, f"{m}/{library}", what, familiarities) for m in methods) / len(methods)
