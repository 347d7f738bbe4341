"""Scores of one model on one familiarity split of the two-hop reuse experiment.

Every model (base, single expert, joint LoRA, merged or routed reuse) gets the same dict:

- ``composed``: exact match on the composed questions ``A_i r1 r2 ?``;
- ``facts[name]``: exact match on expert ``name``'s own facts (one-hop retention; AC's are
  the composed questions);
- ``broadcast[name]``: on control questions of expert ``name``'s template about other
  subjects, the share answered with one of that expert's NEW answers (T2: an edit that
  broadcasts looks like composition on the true prompts, so compare the two);
  ``broadcast["composed"]`` does this for the composed template ``X r1 r2 ?``;
- ``pretrain_atomic`` / ``pretrain_test_id``: what is left of the base model's knowledge
  and of its composition on held-out familiar chains.

Chance levels (:func:`chance_levels`) use the number of entity tokens as the answer space.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from torch import nn

from toymodels.protocol import TaskFamily
from toymodels.reuse_options import ReuseOptions, method_options  # noqa: F401  (re-exported)
from toymodels.tasks.experts import ExpertSet, broadcast_rate
from toymodels.tasks.twohop import Pretraining
from toymodels.train import exact_match, greedy_final_answers

if TYPE_CHECKING:
    from toymodels.pipeline import BaseRun


def chance_levels(pre: Pretraining, es: ExpertSet) -> dict:
    n_entities = pre.graph.n_entities + pre.graph.tokenizer.n_new
    return {"composed": 1.0 / n_entities,
            "broadcast": {name: len(c.new_answers) / n_entities for name, c in es.controls.items()}}


def _rate(model: nn.Module, es: ExpertSet, name: str) -> float:
    control = es.controls[name]
    return broadcast_rate(greedy_final_answers(model, control.questions), control)


def score_model(model: nn.Module, base: "BaseRun", es: ExpertSet, members: Sequence[str],
                composed_from: int = 0) -> dict:
    model.eval()
    broadcast = {name: _rate(model, es, name) for name in members if name != "AC"}
    broadcast["composed"] = _rate(model, es, "AC")
    evals = base.pretraining.eval_sets
    return {"composed": exact_match(model, es.composed[composed_from:]),
            "facts": {name: exact_match(model, es.facts_eval[name]) for name in members},
            "broadcast": broadcast,
            "pretrain_atomic": exact_match(model, evals["atomic"]),
            "pretrain_test_id": exact_match(model, evals["test_id"])}


def oracle(per: list[dict], members: Sequence[str]) -> dict:
    """Task-level oracle selection from ``per[i]``, the scores with all weight on adapter ``i``
    (one-hot routing): on each eval set the adapter that scores best there; broadcast uses
    the adapter so chosen."""
    best = max(range(len(per)), key=lambda i: per[i]["composed"])
    out = dict(per[best], facts={n: max(p["facts"][n] for p in per) for n in members})
    out["broadcast"] = {n: per[members.index(n)]["broadcast"][n] for n in members if n != "AC"}
    out["broadcast"]["composed"] = per[best]["broadcast"]["composed"]
    out["composed_adapter"] = members[best]
    return out


def two_hop_family(base: "BaseRun", es: ExpertSet, libraries: dict[str, Sequence[str]],
                   reuse: ReuseOptions) -> TaskFamily:
    """One familiarity split of the toy two-hop task as a :class:`toymodels.protocol.TaskFamily`.
    LoraHub's search sees the first ``reuse.lorahub_shots`` composed questions and its
    ``composed`` score leaves them out; every reuse method also reports ``composed_rows``."""
    def score(model: nn.Module, members: Sequence[str], method: str | None) -> dict:
        if method is None:
            return score_model(model, base, es, members)
        skip = reuse.lorahub_shots if method == "lorahub" else 0
        return dict(score_model(model, base, es, members, composed_from=skip), composed_rows=len(es.composed) - skip)

    return TaskFamily(experts=es.train, libraries=libraries, shots=es.composed[:reuse.lorahub_shots],
                      score=score, oracle=lambda per, members: oracle(per, list(members)))
