"""Composition metrics on the composed questions of a toy two-hop split (issue 12 item 1), all
read on the SAME true composed prompts, so that composition, broadcast and retention compare
like for like:

- ``composed``: the final answer ``C_i`` is the model's greedy answer (in CoT after its OWN
  bridge), i.e. the token the broadcast controls read, in both formats;
- ``composed_chain``: the whole answer is exact (teacher forcing == greedy, ``toymodels.train``):
  in CoT bridge ``B_i``, ``C_i`` and EOS (what ``composed`` meant for CoT before issue 12);
  in the latent format ``C_i`` and EOS;
- ``composed_logprob`` / ``composed_rank``: mean log-probability of ``C_i`` and mean rank of
  ``C_i`` among the whole vocabulary (1 = the top token; ties counted in its favour) at the
  final answer position, teacher forced (in CoT: given the gold bridge);
- ``specificity``: ``right`` = mean P(C_i), ``wrong`` = mean over questions of the mean
  P(C_j) over the OTHER composed questions' answers ``C_j != C_i``, ``margin`` = right - wrong;
  same position and forcing as the log-probability. An adapter that broadcasts its new answers
  has margin <= 0 however high its ``composed``;
- ``conditional``: ``composed`` over the questions whose two one-hop facts (``A_i r1 -> B_i``
  and ``B_i r2 -> C_i``) the same model answers exactly, and ``n`` how many (``composed`` None
  when n == 0): "knows both hops, cannot combine them".
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from toymodels.tasks import Examples
from toymodels.train import exact_match_rows, final_answer_log_probs, greedy_final_answers


def _mean(x: Tensor) -> float:
    return x.float().mean().item() if len(x) else float("nan")


def gold_rank(log_probs: Tensor, gold: Tensor) -> Tensor:
    """``(N,)`` 1-based rank of ``gold[i]`` in ``log_probs[i]`` (``(N, V)``): 1 + the number of
    tokens scored strictly higher."""
    at = log_probs.gather(1, gold[:, None])  # (N, 1)
    return 1 + (log_probs > at).sum(1)


def specificity(log_probs: Tensor, gold: Tensor, answers: Tensor | None = None) -> dict:
    """``{"right", "wrong", "margin"}`` from ``log_probs: (N, V)`` at the final answer position of
    each true composed prompt; ``answers``: every composed question's new answer (default
    ``gold``); row ``i``'s wrong answers are the distinct ``answers`` other than ``gold[i]``.
    ``wrong`` (and ``margin``) is NaN when no row has a wrong answer."""
    answers = torch.unique(gold if answers is None else answers)  # (K,)
    p = log_probs.exp()
    right = p.gather(1, gold[:, None])[:, 0]  # (N,)
    other = answers[None, :] != gold[:, None]  # (N, K)
    n_other = other.sum(1)
    wrong = (p[:, answers] * other).sum(1)[n_other > 0] / n_other[n_other > 0]
    r, w = _mean(right), _mean(wrong)
    return {"right": r, "wrong": w, "margin": r - w}


def conditional(composed_ok: Tensor, needed_ok: Tensor) -> dict:
    """``{"composed": mean of composed_ok where needed_ok (None if none), "n": count}``; both ``(N,)`` bool."""
    n = int(needed_ok.sum())
    return {"composed": composed_ok[needed_ok].float().mean().item() if n else None, "n": n}


def composed_metrics(model: nn.Module, composed: Examples, answers: Tensor | None = None) -> tuple[dict, Tensor]:
    """The composed-prompt metrics above (without ``conditional``) and ``(N,)`` bool, which
    questions ``composed`` counts right. ``answers``: see :func:`specificity`."""
    if not len(composed):
        nan = float("nan")
        return {"composed": nan, "composed_chain": nan, "composed_logprob": nan, "composed_rank": nan,
                "specificity": {"right": nan, "wrong": nan, "margin": nan}}, torch.zeros(0, dtype=torch.bool)
    gold = composed.final_answers
    right = greedy_final_answers(model, composed) == gold  # (N,)
    log_probs = final_answer_log_probs(model, composed)  # (N, d_vocab)
    return {"composed": _mean(right), "composed_chain": _mean(exact_match_rows(model, composed)),
            "composed_logprob": _mean(log_probs.gather(1, gold[:, None])[:, 0]),
            "composed_rank": _mean(gold_rank(log_probs, gold)),
            "specificity": specificity(log_probs, gold, answers)}, right
