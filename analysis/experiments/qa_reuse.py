"""``qa_reuse``: history/geography QA reuse on a pretrained causal LM (issue 10 item 3; the
protocol is :func:`toymodels.qa_reuse.run_qa_reuse`, the data :mod:`toymodels.tasks.history_qa`).

Chains person -> birth city -> country (paper profile: and continent), splits F (fictional),
H (fictional person, real city), R (real people the base knows) and OOD (real people the base
knows, never in any expert's data). Experts AB, BC, AC; libraries ``hops`` = {AB, BC} and
``with_AC``. One config per seed; the model is ``model`` as in ``pretrained_two_hop`` (the
bundled SmolLM2-135M-Instruct by default; its preflight and install hint are reused).

``reproduce_profiles = ("paper",)``: a LoRA on a 135M model takes CPU minutes; ``lora-limits
run qa_reuse`` runs the quick profile on demand.

Claims (one number per seed; a split with no composed question for a seed is left out), all
read as gains over the base model, because on R and OOD the base itself already answers many
composed questions (it knows both hops by construction):

- ``QA-1-<split>``: data-free reuse of {AB, BC} answers the composed questions beyond the
  control: max over data-free methods of composed exact match minus the control, the larger
  of the base's own composed accuracy on the split and the method's AC-template broadcast
  rate (OOD has no broadcast: no expert learned an answer for it; its control is the base).
- ``QA-2-<split>``: the same on the continuous, broadcast-robust specificity margin (P(gold)
  - P(another composed answer) on the true prompt), as a gain over the base's margin.
- ``QA-3``: familiarity: the ``with_AC`` reuse gain over the base on R minus that on F (mean
  over data-free methods).

Ceilings (issue 12): each claim is read against the joint-data LoRA on the same experts' data
(``joint/hops`` for QA-1/2, ``joint/with_AC`` for QA-3) on the same measure: when its mean
over seeds does not reach the claim's margin (for QA-3 on both F and R), nothing that
fine-tunes on this data composes here either, and the verdict is "not testable".

Each claim's "Behind it" line says UNDERPOWERED when fewer than 3 seeds ran or one composed
question moves the per-split accuracy by more than the margin (the report's verdict applies
only the seed rule; read the line beside it). The quick profile's R and OOD are underpowered
by construction: SmolLM2-135M answers both hops of only 19 of the 182 real people.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from analysis.experiments.pretrained_two_hop import PretrainedRunConfig, check_available, model_label, preflight
from analysis.experiments.two_hop_reuse import DATA_FREE, by_seed
from analysis.registry import Ceiling, ClaimMeasure, Experiment, Result, register
from analysis.stats import DIFFERENCE
from analysis.tables import print_table
from analysis.verdict import Claim
from toymodels.qa_reuse import QAReuseConfig, paper, quick
from toymodels.tasks.history_qa import SPLITS

QUICK_SEEDS, PAPER_SEEDS = (0, 1, 2), (0, 1, 2)
MARGIN = 0.1
SPEC_MARGIN = 0.05
SPEC_RANGE = (-2.0, 2.0)  # a difference of two margins, each P(gold) - P(other) in [-1, 1]


@dataclass(frozen=True)
class QARunConfig(PretrainedRunConfig):
    """``protocol``: the QA protocol config; ``model`` and ``seed`` as in ``pretrained_two_hop``."""

    protocol: QAReuseConfig = field(default_factory=quick)


def grid(profile: str) -> list[QARunConfig]:
    if profile == "quick":
        return [QARunConfig(protocol=quick(), seed=s) for s in QUICK_SEEDS]
    return [QARunConfig(protocol=paper(), seed=s) for s in PAPER_SEEDS]


def run(config: QARunConfig, device: str, results: Path | str) -> dict:
    """Load the model, run the protocol, return its result."""
    check_available(config.model)
    from analysis.progress import current
    from toymodels.pretrained import load_causal_lm
    from toymodels.qa_reuse import run_qa_reuse

    model, tokenizer = load_causal_lm(config.model, Path(results) / "pretrained")
    protocol = run_qa_reuse(config.protocol, model, tokenizer, seed=config.seed, device=device, progress=current())
    return {"model": model_label(config.model), "seed": config.seed, "protocol": protocol}


# --- reading the results ------------------------------------------------------------------

def split_score(r: Result, model: str, split: str) -> dict | None:
    return r.result["protocol"]["models"].get(model, {}).get("splits", {}).get(split)


def methods(r: Result) -> list[str]:
    """The data-free reuse methods of ``r``'s config."""
    return [m for m in DATA_FREE if m in r.result["protocol"]["config"]["methods"]]


def control(r: Result, model: str, split: str) -> float:
    """The larger of the base's composed accuracy on ``split`` and ``model``'s AC broadcast rate."""
    cast = (split_score(r, model, split).get("broadcast") or {}).get("AC")
    return max(split_score(r, "base", split)["composed"], cast or 0.0)


def _per_seed(results: list[Result], value: Callable[[Result], float | None]) -> list[float]:
    """One value per seed, seeds whose value is None (an empty split) left out."""
    return list(by_seed([r for r in results if value(r) is not None], value).values())


def _has(r: Result, split: str, *models: str) -> bool:
    return all(split_score(r, m, split) is not None for m in ("base", *models))


def beyond(r: Result, model: str, split: str) -> float:
    """``model``'s composed exact match on ``split`` minus its control (:func:`control`)."""
    return split_score(r, model, split)["composed"] - control(r, model, split)


def margin(score: dict) -> float | None:
    """A split score's specificity margin P(gold) - P(another composed answer); None where no
    question of the split has another answer to compare with."""
    return (score["specificity"] or {}).get("margin")


def spec_gain(r: Result, model: str, split: str) -> float | None:
    """``model``'s specificity margin on ``split`` minus the base's (None where either is undefined)."""
    mine, base = margin(split_score(r, model, split)), margin(split_score(r, "base", split))
    return None if mine is None or base is None else mine - base


def gain(r: Result, model: str, split: str) -> float:
    """``model``'s composed exact match on ``split`` minus the base's."""
    return split_score(r, model, split)["composed"] - split_score(r, "base", split)["composed"]


def _best_data_free(measure: Callable[[Result, str, str], float | None], library: str, split: str):
    def value(r: Result) -> float | None:
        if not methods(r) or not _has(r, split, *(f"{m}/{library}" for m in methods(r))):
            return None
        values = [v for m in methods(r) if (v := measure(r, f"{m}/{library}", split)) is not None]
        return max(values) if values else None
    return lambda results: _per_seed(results, value)


def beyond_control(split: str) -> Callable[[list[Result]], list[float]]:
    return _best_data_free(beyond, "hops", split)


def specificity_gain(split: str) -> Callable[[list[Result]], list[float]]:
    return _best_data_free(spec_gain, "hops", split)


def familiarity_gap(results: list[Result]) -> list[float]:
    """Per seed, mean over data-free methods of the with_AC model's gain over the base on R minus
    its gain on F (gains, because the base alone answers many R questions and no F question)."""
    def value(r: Result) -> float | None:
        models = [f"{m}/with_AC" for m in methods(r)]
        if not models or not (_has(r, "R", *models) and _has(r, "F", *models)):
            return None
        return float(np.mean([gain(r, m, "R") - gain(r, m, "F") for m in models]))
    return _per_seed(results, value)


def _joint(measure: Callable[[Result, str, str], float | None], model: str, splits: tuple[str, ...]):
    """Per seed, the smallest over ``splits`` of ``measure`` of the joint-data LoRA ``model``."""
    def value(r: Result) -> float | None:
        if not all(_has(r, sp, model) for sp in splits):
            return None
        values = [measure(r, model, sp) for sp in splits]
        return None if None in values else min(values)
    return lambda results: _per_seed(results, value)


def ceiling(measure: Callable[[Result, str, str], float | None], what: str, model: str, splits: tuple[str, ...],
            threshold: float) -> Ceiling:
    """The joint-data LoRA on the same experts' data must itself reach the claim's margin on the
    same measure (issue 12: a reuse verdict where nothing that fine-tunes composes is "not testable")."""
    return Ceiling(f"{model} {what} ({'min over ' if len(splits) > 1 else ''}{'/'.join(splits)})",
                   _joint(measure, model, splits), threshold)


def power(splits: tuple[str, ...], margin: float) -> Callable[[list[Result]], str]:
    """The 'Behind it' line: seeds, composed questions per split, and whether that is underpowered."""
    def detail(results: list[Result]) -> str:
        seeds = sorted({r.config.seed for r in results})
        sizes = composed_questions(splits)(results)
        small = [sp for sp, n in sizes.items() if n == 0 or 1 / n > margin]
        why = ([f"{len(seeds)} seed(s) < 3"] if len(seeds) < 3 else []) + \
              [f"split {sp}: {sizes[sp]} composed question(s), one moves accuracy by more than {margin:g}" for sp in small]
        line = f"{len(seeds)} seeds; composed questions per seed: " + ", ".join(f"{sp} {n}" for sp, n in sizes.items())
        return line + (f"; UNDERPOWERED ({'; '.join(why)})" if why else "")
    return detail


def composed_questions(splits: tuple[str, ...]) -> Callable[[list[Result]], dict[str, int]]:
    """The fewest composed questions any seed has per split."""
    return lambda results: {sp: min((r.result["protocol"]["splits"][sp]["composed"] for r in results), default=0)
                            for sp in splits}


def _claims() -> tuple[ClaimMeasure, ...]:
    rows = []
    for split in SPLITS:
        rows.append(ClaimMeasure(Claim(
            f"QA-1-{split}", f"data-free merging or routing of the one-hop experts {{AB, BC}} answers composed "
            f"history/geography questions beyond the control (split {split})",
            "max over data-free methods of composed exact match - max(base composed, broadcast rate), hops",
            "above", MARGIN, f"a convention: {MARGIN:g} is an excess of about one composed question in ten over "
            "the control (what the base or a broadcasting adapter already gets)"),
            beyond_control(split), ("qa_reuse",), power((split,), MARGIN), DIFFERENCE,
            ceiling(beyond, "composed - control", "joint/hops", (split,), MARGIN), composed_questions((split,))))
        rows.append(ClaimMeasure(Claim(
            f"QA-2-{split}", f"data-free reuse of {{AB, BC}} raises the specificity margin P(gold) - P(another "
            f"composed answer) on composed questions over the base model (split {split})",
            "max over data-free methods of specificity margin - the base's, hops", "above", SPEC_MARGIN,
            f"a convention: {SPEC_MARGIN:g} of probability mass moved to the right answer rather than to "
            "another composed question's answer"),
            specificity_gain(split), ("qa_reuse",), power((split,), SPEC_MARGIN), SPEC_RANGE,
            ceiling(spec_gain, "specificity margin - base's", "joint/hops", (split,), SPEC_MARGIN),
            composed_questions((split,))))
    rows.append(ClaimMeasure(Claim(
        "QA-3", "familiar entities compose better than fictional ones (F < R), as gains over the base",
        "(with_AC composed - base composed on R) - (the same on F), mean over data-free methods", "above", MARGIN,
        f"a convention: {MARGIN:g} is about one composed question in ten"),
        familiarity_gap, ("qa_reuse",), power(("F", "R"), MARGIN), (-2.0, 2.0),
        ceiling(gain, "composed - base composed", "joint/with_AC", ("F", "R"), MARGIN), composed_questions(("F", "R"))))
    return tuple(rows)


# --- terminal tables ----------------------------------------------------------------------

def _cell(x, digits: str = ".2f") -> str:
    return "-" if x is None else format(x, digits)


def print_tables(r: Result, out=None) -> None:
    out = out or sys.stdout
    p = r.result["protocol"]
    fam = p["familiarity"]
    print(f"\n{r.result['model']} (seed {r.result['seed']}): base one-hop familiarity {fam['exact']:.2f} "
          f"({fam['known']} of {fam['facts']} real facts answered); composed questions per split: "
          + ", ".join(f"{sp} {s['composed']}" for sp, s in p["splits"].items()), file=out)
    splits = [sp for sp in SPLITS if split_score(r, "base", sp) is not None]
    head = ["model"] + [f"{sp} {k}" for sp in splits for k in ("acc", "logp", "spec", "ctl")]
    rows = []
    for name in p["models"]:
        row = [name]
        for sp in splits:
            s = split_score(r, name, sp)
            row += [_cell(s["composed"]), _cell(s["composed_logprob"], ".1f"), _cell(margin(s)),
                    _cell(control(r, name, sp))]
        rows.append(row)
    print("composed questions: exact match, mean gold log-prob, specificity margin, control (max of base "
          "composed and AC broadcast)", file=out)
    print_table(head, rows, out=out, rule=True)


def print_all(results: list[Result], out=None) -> None:
    for r in results:
        print_tables(r, out)


def _figures() -> dict:
    from analysis.figures.qa_reuse import qa_figure

    return {"qa_reuse": qa_figure}


EXPERIMENT = register(Experiment(
    name="qa_reuse",
    description="history/geography QA reuse on SmolLM2-135M (person -> birth city -> country; F/H/R/OOD); "
                "reproduce: paper profile only",
    grid=grid, run=run, figures=_figures(), claims=_claims(),
    reproduce_profiles=("paper",), preflight=preflight, summary=print_all,
))
