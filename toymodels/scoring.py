"""Scores of one model on one familiarity split of the two-hop reuse experiment.

Every model (base, single expert, joint LoRA or full fine-tune, merged or routed reuse) gets
the same dict:

- on the composed questions ``A_i r1 r2 ?`` (:mod:`toymodels.metrics`, one prompt set and one
  decoding for all): ``composed`` (the greedy final answer is ``C_i``, both formats; in CoT
  after the model's own bridge), ``composed_chain`` (the whole answer exact: in CoT bridge,
  answer and EOS, which is what ``composed`` meant for CoT before issue 12),
  ``composed_logprob``, ``composed_rank``, ``specificity`` and ``conditional``
  (composition over the questions whose AB and BC facts the model answers);
- ``facts[name]``: exact match on expert ``name``'s own facts (one-hop retention; AC's are
  the composed questions);
- ``broadcast[name]``: on control questions of expert ``name``'s template about other
  subjects, the share whose greedy FINAL answer token is one of that expert's NEW answers
  (both formats; T2: an edit that broadcasts looks like composition on the true prompts);
  ``broadcast["composed"]`` does this for the composed template ``X r1 r2 ?``;
- ``pretrain_atomic`` / ``pretrain_test_id`` (and ``pretrain_test_ood`` where the corpus has
  out-of-distribution entities): what is left of the base model's knowledge and of its
  composition on held-out chains.

Chance levels (:func:`chance_levels`) use the number of entity tokens as the answer space.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from torch import nn

from toymodels.metrics import composed_metrics, conditional
from toymodels.protocol import TaskFamily
from toymodels.reuse_options import ReuseOptions, method_options  # noqa: F401  (re-exported)
from toymodels.tasks.experts import ExpertSet, broadcast_rate
from toymodels.tasks.twohop import Pretraining
from toymodels.train import exact_match, exact_match_rows, greedy_final_answers

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
    """The dict above; the composed metrics skip the first ``composed_from`` questions (LoraHub's
    shots), but specificity's wrong answers are every composed question's."""
    model.eval()
    broadcast = {name: _rate(model, es, name) for name in members if name != "AC"}
    broadcast["composed"] = _rate(model, es, "AC")
    evals = base.pretraining.eval_sets
    composed, right = composed_metrics(model, es.composed[composed_from:], es.composed.final_answers)
    rows = {name: exact_match_rows(model, es.facts_eval[name]) for name in dict.fromkeys([*members, "AB", "BC"])}
    hops = (rows["AB"] & rows["BC"])[composed_from:]  # row i of AB, BC and composed: chain i
    pretrain = {f"pretrain_{name}": exact_match(model, evals[name])
                for name in ("atomic", "test_id", "test_ood") if name in evals}
    return {**composed, "conditional": conditional(right, hops),
            "facts": {name: rows[name].float().mean().item() for name in members}, "broadcast": broadcast,
            **pretrain}


def oracle(per: list[dict], members: Sequence[str]) -> dict:
    """Task-level oracle selection from ``per[i]``, the scores with all weight on adapter ``i``
    (one-hot routing): on each eval set the adapter that scores best there. Every composed-prompt
    metric (``composed*``, ``specificity``, ``conditional``), the composed broadcast control and
    the pretraining retention come from the adapter best on ``composed``; ``facts[n]`` is the
    best adapter's on ``n``, ``broadcast[n]`` adapter ``n``'s own."""
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
