"""Per-familiarity metrics of one model on the natural-language two-hop questions (the
session's shared metric names; issue 12 item 1), all on the SAME composed prompts with the
same teacher-forced decoding as :func:`toymodels.tasks.natural.answer_scores` (computed by
:func:`answer_rows`):

- ``composed``: exact match of the gold answer on the held-out two-hop questions
  (``two_hop_unseen``); ``composed_logprob``: their mean gold-answer log-probability (sum
  over the answer's tokens);
- ``specificity``: on each true composed prompt, P(gold answer) against P(another composed
  question's answer), the broadcast control measured on the same prompts: ``right`` (mean
  P(gold)), ``wrong`` (mean over questions of the mean P(wrong answers)), ``margin`` =
  right - wrong, and in log space ``logprob_margin`` = mean over questions of log P(gold) -
  mean log P(wrong); ``wrong_exact`` (share of questions whose greedy answer is one of their
  wrong answers: the exact-match broadcast rate) and ``exact_margin`` = composed - wrong_exact.
  A question's wrong answers are up to ``n_wrong`` answers of other composed questions of
  the same relation and familiarity that differ from its own (drawn once per run);
- ``conditional``: exact match over the composed questions whose two one-hop facts (city ->
  country, country -> answer) the same model answers exactly, and ``n``, how many; null
  ``composed`` when ``n == 0`` ("knows both hops, cannot combine" is read here).

:func:`greedy_texts` is free-running greedy decoding, for families whose answer is read from
generated text (the math family's final line).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toymodels.tasks import Examples
from toymodels.tasks.natural import SPLITS, Chain, encode_pairs
from toymodels.train import logits_at

Pair = tuple[str, str]


@dataclass(frozen=True)
class SplitProbe:
    """What one familiarity's metrics need: its composed questions (``two_hop_unseen`` order),
    each one's row in ``one_hop_AB`` / ``one_hop_BC``, and the wrong-answer rows
    ``(question index, (its prompt, another question's answer))``."""

    familiarity: str
    composed: list[Pair]
    hops: list[tuple[int, int]]
    wrong: list[tuple[int, Pair]]


def split_probes(chains: list[Chain], sets: dict[str, list[Pair]], n_wrong: int,
                 rng: np.random.Generator) -> list[SplitProbe]:
    """One probe per familiarity with composed questions; ``sets`` are
    :func:`toymodels.tasks.natural.eval_pairs` (the rows the hops index into)."""
    if not isinstance(n_wrong, int) or n_wrong < 1:
        raise ValueError(f"n_wrong={n_wrong!r}: must be an integer >= 1")
    probes = []
    for fam in SPLITS:
        composed = sets.get(f"{fam}/two_hop_unseen", [])
        if not composed:
            continue
        ab = {p: i for i, p in enumerate(sets[f"{fam}/one_hop_AB"])}
        bc = {p: i for i, p in enumerate(sets[f"{fam}/one_hop_BC"])}
        by_pair = {c.two_hop(): c for c in chains if c.familiarity == fam and not c.in_ac}
        mine = [by_pair[q] for q in composed]
        hops = [(ab[c.hop1()], bc[c.hop2()]) for c in mine]
        wrong = []
        for i, c in enumerate(mine):
            others = sorted({o.answer for o in mine if o.relation == c.relation and o.answer != c.answer})
            picks = rng.choice(len(others), min(n_wrong, len(others)), replace=False) if others else []
            wrong += [(i, (composed[i][0], " " + others[j])) for j in sorted(picks)]
        probes.append(SplitProbe(fam, composed, hops, wrong))
    return probes


def encode_wrong(probes: list[SplitProbe], tokenizer) -> Examples | None:
    """Every probe's wrong-answer rows in one batch, in ``probes`` order."""
    pairs = [pair for p in probes for _, pair in p.wrong]
    return encode_pairs(pairs, tokenizer) if pairs else None


def mean_or_none(x: torch.Tensor) -> float | None:
    return x.float().mean().item() if len(x) else None


def composed_metrics(exact: torch.Tensor, logprob: torch.Tensor, knows: torch.Tensor, owner: torch.Tensor,
                     wrong: tuple[torch.Tensor, torch.Tensor] | None) -> dict:
    """One split's metrics (module docstring) from per-question ``exact`` and ``logprob`` of the
    composed questions, ``knows`` (the same model answers both of the question's one-hop facts),
    and the wrong-answer rows' ``(exact, logprob)`` with ``owner``, each row's question index.
    Every family's specificity and conditional composition is this function (two-hop, QA)."""
    n_q, n = len(exact), len(owner)
    has = torch.zeros(n_q, dtype=torch.bool)
    wrong_p, wrong_lp, wrong_hit = (torch.zeros(n_q) for _ in range(3))
    if n:
        w_exact, w_lp = wrong
        count = torch.zeros(n_q).index_add_(0, owner, torch.ones(n))
        has = count > 0
        wrong_p = torch.zeros(n_q).index_add_(0, owner, w_lp.exp()) / count.clamp(min=1)
        wrong_lp = torch.zeros(n_q).index_add_(0, owner, w_lp) / count.clamp(min=1)
        wrong_hit = torch.zeros(n_q).index_add_(0, owner, w_exact.float()) > 0
    spec = None
    if has.any():
        right, wrong_mean = logprob.exp()[has].mean().item(), wrong_p[has].mean().item()
        spec = {"right": right, "wrong": wrong_mean, "margin": right - wrong_mean,
                "logprob_margin": (logprob[has] - wrong_lp[has]).mean().item(),
                "wrong_exact": wrong_hit[has].float().mean().item(),
                "exact_margin": (exact[has].float() - wrong_hit[has].float()).mean().item(),
                "questions": int(has.sum())}
    return {"n_composed": n_q, "composed": mean_or_none(exact), "composed_logprob": mean_or_none(logprob),
            "specificity": spec, "conditional": {"composed": mean_or_none(exact[knows]), "n": int(knows.sum())}}


def split_metrics(per_set: dict[str, tuple[torch.Tensor, torch.Tensor]], probes: list[SplitProbe],
                  wrong: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, dict]:
    """``{familiarity: metrics}`` (:func:`composed_metrics`) from the per-row ``(exact, logprob)``
    of every eval set (``per_set``) and of the wrong-answer rows (``wrong``, in probe order)."""
    out, start = {}, 0
    for p in probes:
        exact, logprob = per_set[f"{p.familiarity}/two_hop_unseen"]
        n = len(p.wrong)
        rows = (wrong[0][start:start + n], wrong[1][start:start + n]) if n else None
        start += n
        owner = torch.tensor([i for i, _ in p.wrong], dtype=torch.long)
        ab_ok, bc_ok = per_set[f"{p.familiarity}/one_hop_AB"][0], per_set[f"{p.familiarity}/one_hop_BC"][0]
        knows = torch.tensor([bool(ab_ok[a]) and bool(bc_ok[b]) for a, b in p.hops], dtype=torch.bool)
        out[p.familiarity] = composed_metrics(exact, logprob, knows, owner, rows)
    return out


@torch.inference_mode()
def answer_rows(model: nn.Module, examples: Examples, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exact (N,) bool, logprob (N,))`` of every row, ``model`` in eval mode: the numbers of
    :func:`toymodels.tasks.natural.answer_scores` (teacher-forced exact match of the whole
    answer, its total log-probability), up to float rounding, computed faster: rows sorted by
    length and batched, each batch cut to its longest row (rows are right-padded and
    attention is causal, so the padding cut never reaches a scored position), and logits only
    at the answer positions (:func:`toymodels.train.logits_at`)."""
    model.eval()
    device = next(model.parameters()).device
    lengths = examples.answer_mask.shape[1] - examples.answer_mask.flip(1).int().argmax(1)  # (N,) end of each answer
    order = torch.argsort(lengths, stable=True)
    exact, logprob = torch.ones(len(examples), dtype=torch.bool), torch.zeros(len(examples))
    for i in range(0, len(examples), batch_size):
        rows = order[i:i + batch_size]
        T = int(lengths[rows].max())
        tokens, mask = examples.tokens[rows, :T].to(device), examples.answer_mask[rows, :T].to(device)  # (B, T)
        at, target = mask[:, 1:], tokens[:, 1:][mask[:, 1:]]  # position t predicts token t + 1; (n,)
        logits = logits_at(model, tokens[:, :-1], at).float()  # (n, d_vocab)
        owner = rows[at.nonzero()[:, 0].cpu()]  # (n,) the row of each scored position
        gold = F.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0].cpu()  # (n,)
        exact[owner[(logits.argmax(-1) != target).cpu()]] = False
        logprob.index_add_(0, owner, gold)
    return exact, logprob


def score_rows(model: nn.Module, sets: dict[str, Examples]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-row ``(exact, logprob)`` of every set (:func:`answer_rows`), all sets' rows in one
    pass so that batches hold rows of like length whatever set they come from."""
    sets = {name: ex for name, ex in sets.items() if ex is not None}
    if not any(len(ex) for ex in sets.values()):
        return {name: answer_rows(model, ex) for name, ex in sets.items()}
    exact, logprob = answer_rows(model, Examples.cat(list(sets.values())))
    sizes = [len(ex) for ex in sets.values()]
    return {name: (e, lp) for name, e, lp in zip(sets, exact.split(sizes), logprob.split(sizes))}


@torch.inference_mode()
def greedy_texts(model: nn.Module, prompts: list[str], tokenizer, max_new: int, batch_size: int = 16,
                 stop: re.Pattern | None = None) -> list[str]:
    """Each prompt's greedy continuation of up to ``max_new`` tokens (HF ``generate`` with a KV
    cache, rows left-padded), decoded to text. A row ends early at the tokenizer's EOS, if any, or
    once its text so far matches ``stop`` (e.g. the math family's final line ``The answer is N``
    and one more token; the caller reads only up to the first match)."""
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    class FinalLine(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):  # (B, width + new) -> (B,) bool
            texts = tokenizer.batch_decode(input_ids[:, width:], skip_special_tokens=True)
            return torch.tensor([stop is not None and stop.search(t) is not None for t in texts],
                                device=input_ids.device)

    hf = getattr(model, "_hf", (model,))[0].eval()
    device = next(hf.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    gen = GenerationConfig(max_new_tokens=max_new, do_sample=False, pad_token_id=pad, eos_token_id=eos)
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts[i:i + batch_size]]
        width = max(len(x) for x in ids)
        tokens = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):
            tokens[r, width - len(x):], mask[r, width - len(x):] = torch.tensor(x), 1
        new = hf.generate(input_ids=tokens.to(device), attention_mask=mask.to(device), generation_config=gen,
                          stopping_criteria=StoppingCriteriaList([FinalLine()]))
        out += [tokenizer.decode(row[width:], skip_special_tokens=True) for row in new.cpu()]
    return out
