"""Any span-answer task family (:class:`toymodels.tasks.family.SpanExpertSet`: math, code) on the
one reuse protocol (:mod:`toymodels.protocol`), with the metrics every scored model reports
(verdicts issue #12 item 1), all on the SAME composed prompts:

- ``composed``: the final answer span (after the last ``sep``, up to EOS) of the model's greedy
  decoding equals the gold one. Decoding runs ``decode_extra`` positions past the gold answer's
  length, so a longer (wrong or right) chain is read to its own EOS, not cut at the gold length;
- ``composed_chain`` (only with a ``sep``, i.e. a worked format): the whole gold answer is the
  greedy decoding (teacher-forced argmax, equal to greedy, :mod:`toymodels.train`);
- ``composed_logprob``: mean over composed questions of the log-probability of the gold answer
  sequence (every answer token, EOS included; for a worked format the whole worked solution);
- ``specificity``: ``right`` = mean P(gold answer sequence), ``wrong`` = mean over questions of
  the mean P(another composed question's answer sequence, one that differs from the gold one) on
  the true prompt, ``margin`` = right - wrong (broadcast measured on the true prompts);
- ``conditional``: composed accuracy over the questions whose needed single-skill probe rows
  (``needs[i]``: ``(probe name, row)`` pairs into ``expert_set.probes``) the same model answers
  exactly; ``n`` such questions; ``composed`` None when ``n == 0``;
- ``facts[name]``: exact match on what member ``name`` was trained on; ``retention[name]``: on
  the base's own skills; ``probes[name]``: on every probe set;
- ``broadcast[name]``: :func:`toymodels.tasks.family.span_broadcast_rate` on member ``name``'s
  control (decoded like ``composed``); ``broadcast["composed"]``: the composed control.

Nothing here knows what the tokens mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from toymodels import seeds
from toymodels.model import GPT, ModelConfig
from toymodels.protocol import TaskFamily
from toymodels.reuse_options import ReuseOptions
from toymodels.tasks import Examples
from toymodels.tasks.family import SpanControl, SpanExpertSet, final_spans, span_broadcast_rate
from toymodels.tasks.knowledge import PAD, encode
from toymodels.tasks.natural import answer_logprob
from toymodels.train import TrainConfig, TrainResult, exact_match, exact_match_rows, greedy_decode, train

Needs = Sequence[Sequence[tuple[str, int]]]  # per composed question: (probe set, row) pairs it needs


def rows(examples: Examples) -> list[tuple[list[int], list[int]]]:
    """``(question tokens, answer tokens)`` of every row (padding dropped; inverse of ``encode``)."""
    out = []
    for tokens, mask in zip(examples.tokens.tolist(), examples.answer_mask.tolist()):
        start = mask.index(True)
        out.append((tokens[:start], [t for t, m in zip(tokens, mask) if m]))
    return out


def open_answers(examples: Examples, extra: int) -> Examples:
    """``examples`` with ``extra`` PAD columns and every position from a row's answer start to the
    end marked as answer, so that greedy decoding may run past the gold answer's length."""
    tokens = nn.functional.pad(examples.tokens, (0, extra), value=PAD)  # (N, T + extra)
    start = examples.answer_mask.int().argmax(1)  # (N,) first answer position
    mask = torch.arange(tokens.shape[1])[None, :] >= start[:, None]  # (N, T + extra)
    return Examples(tokens, mask)


def decoded_final_spans(model: nn.Module, examples: Examples, sep: int | None, extra: int) -> list:
    """The final answer span the model writes for each row (None: no EOS within reach)."""
    wide = open_answers(examples, extra)
    return final_spans(greedy_decode(model, wide), wide, sep)


def final_answer_rows(model: nn.Module, examples: Examples, sep: int | None, extra: int) -> torch.Tensor:
    """``(N,)`` bool: the decoded final span equals the gold one."""
    gold = final_spans(examples.tokens, examples, sep)
    return torch.tensor([d == g for d, g in zip(decoded_final_spans(model, examples, sep, extra), gold)],
                        dtype=torch.bool)


def broadcast(model: nn.Module, control: SpanControl, extra: int) -> float:
    """:func:`span_broadcast_rate` on decodings that may run ``extra`` past the gold length."""
    if not len(control.questions):
        return float("nan")
    wide = open_answers(control.questions, extra)
    return span_broadcast_rate(greedy_decode(model, wide), SpanControl(wide, control.new_answers, control.sep))


def specificity(model: nn.Module, examples: Examples, max_others: int = 15) -> dict:
    """P(gold answer sequence) vs the mean P of up to ``max_others`` other questions' answer
    sequences (the next ones in order, cyclically, skipping answers equal to the gold one), all
    on the true prompt; NaN where fewer than two questions differ in answer."""
    rs = rows(examples)
    right = answer_logprob(model, examples).exp()  # (N,)
    pairs = []
    for i in range(len(rs)):
        others = [j for k in range(1, len(rs)) if rs[j := (i + k) % len(rs)][1] != rs[i][1]]
        pairs += [(i, j) for j in others[:max_others]]
    if not pairs:
        return {"right": float(right.mean()) if len(rs) else math.nan, "wrong": math.nan, "margin": math.nan}
    crossed = answer_logprob(model, encode([(rs[i][0], rs[j][1]) for i, j in pairs])).exp()  # (P,)
    per: dict[int, list[float]] = {}
    for (i, _), p in zip(pairs, crossed.tolist()):
        per.setdefault(i, []).append(p)
    wrong = sum(sum(v) / len(v) for v in per.values()) / len(per)
    r = float(right[list(per)].mean())
    return {"right": r, "wrong": wrong, "margin": r - wrong}


def conditional(composed_ok: torch.Tensor, needs: Needs, probe_ok: Mapping[str, torch.Tensor]) -> dict:
    """Composed accuracy over the questions whose every needed probe row is answered (``probe_ok``:
    per probe set, ``(rows,)`` bool); ``composed`` None when no question qualifies."""
    if len(needs) != len(composed_ok):
        raise ValueError(f"needs has {len(needs)} entries for {len(composed_ok)} composed questions: need one each")
    keep = [i for i, need in enumerate(needs) if all(bool(probe_ok[name][row]) for name, row in need)]
    return {"composed": float(composed_ok[keep].float().mean()) if keep else None, "n": len(keep)}


def score_span_model(model: nn.Module, es: SpanExpertSet, members: Sequence[str], sep: int | None, needs: Needs,
                     extra: int = 8, composed_from: int = 0) -> dict:
    """Every metric of the module docstring for one model (composed rows from ``composed_from``)."""
    model.eval()
    composed = es.composed[composed_from:]
    ok = final_answer_rows(model, composed, sep, extra)
    probe_ok = {name: exact_match_rows(model, ex) for name, ex in es.probes.items()}
    out = {"composed": float(ok.float().mean()) if len(ok) else math.nan,
           "composed_logprob": float(answer_logprob(model, composed).mean()),
           "specificity": specificity(model, composed),
           "conditional": conditional(ok, needs[composed_from:], probe_ok),
           "facts": {name: exact_match(model, es.facts_eval[name]) for name in members},
           "retention": {name: exact_match(model, ex) for name, ex in es.retention.items()},
           "probes": {name: float(v.float().mean()) if len(v) else math.nan for name, v in probe_ok.items()},
           "broadcast": {name: broadcast(model, es.controls[name], extra)
                         for name in [m for m in members if m != "composed"] + ["composed"] if name in es.controls}}
    if sep is not None:
        out["composed_chain"] = float(exact_match_rows(model, composed).float().mean())
    return out


def span_oracle(per: list[dict], members: Sequence[str]) -> dict:
    """Task-level oracle selection from ``per[i]`` (all routing weight on adapter ``i``): the
    composed metrics of the adapter best on ``composed``; each member's facts at their best; each
    member's broadcast from its own adapter, the composed control's from the chosen one."""
    members = list(members)
    best = max(range(len(per)), key=lambda i: per[i]["composed"])
    out = dict(per[best], facts={n: max(p["facts"][n] for p in per) for n in members})
    out["broadcast"] = {n: per[members.index(n)]["broadcast"][n] for n in per[best]["broadcast"] if n != "composed"}
    if "composed" in per[best]["broadcast"]:
        out["broadcast"]["composed"] = per[best]["broadcast"]["composed"]
    out["composed_adapter"] = members[best]
    return out


def span_family(es: SpanExpertSet, libraries: Mapping[str, Sequence[str]], reuse: ReuseOptions,
                sep: int | None, needs: Needs, extra: int = 8) -> TaskFamily:
    """``es`` as a :class:`TaskFamily`. LoraHub's search sees the first ``reuse.lorahub_shots``
    composed questions and its composed metrics leave them out (``composed_rows`` says how many
    remain); ``sep``: the token before the final answer in a worked answer (None: direct answers);
    ``extra``: decoding positions past the gold answer length (the model's ``n_ctx`` must hold them)."""
    if len(needs) != len(es.composed):
        raise ValueError(f"needs has {len(needs)} entries for {len(es.composed)} composed questions: need one each")
    unknown = sorted({name for need in needs for name, _ in need} - set(es.probes))
    if unknown:
        raise ValueError(f"needs names probe sets {unknown} that the expert set lacks; it has {sorted(es.probes)}")

    def score(model: nn.Module, members: Sequence[str], method: str | None) -> dict:
        skip = reuse.lorahub_shots if method == "lorahub" else 0
        out = score_span_model(model, es, members, sep, needs, extra, composed_from=skip)
        return out if method is None else dict(out, composed_rows=len(es.composed) - skip)

    return TaskFamily(experts=es.train, libraries=libraries, shots=es.composed[:reuse.lorahub_shots],
                      score=score, oracle=span_oracle)


@dataclass
class SpanBase:
    """A pretrained base model (``result.model``) and the corpus it was pretrained on."""

    pretraining: Any  # the family's corpus, e.g. MathPretraining or CodePretraining
    result: TrainResult

    @property
    def model(self) -> GPT:
        return self.result.model


def train_span_base(corpus, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int, device: str = "auto",
                    progress=None) -> TrainResult:
    """Pretrain a toy GPT on ``corpus.train`` (eval sets ``corpus.eval_sets``); its init and batch
    order draw from the streams ``("base", "init")`` and ``("base", "batches")`` of ``seed``.
    The returned model is frozen and in eval mode."""
    model = GPT(model_cfg, generator=seeds.torch_gen(seed, "base", "init"))
    result = train(model, corpus.train, train_cfg, seeds.torch_gen(seed, "base", "batches"), corpus.eval_sets,
                   device, progress)
    result.model.requires_grad_(False).eval()
    return result
