"""Teacher-forced answer scoring of ``prompt + answer`` rows (split from
:mod:`toymodels.tasks.natural`, which re-exports it): exact match of every answer token and the
answer's total log-probability, for any model whose ``model(tokens)`` returns logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toymodels.tasks import Examples


@torch.no_grad()
def answer_scores(model: nn.Module, examples: Examples, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exact (N,) bool, logprob (N,))`` from one forward pass per batch: exact match as in
    :func:`toymodels.train.exact_match_rows` (every answer token is the argmax given the
    gold prefix), and the total log-probability of the answer tokens. ``model(tokens)``
    returns logits ``(B, T, d_vocab)``."""
    device = next(model.parameters()).device
    exact, logprob = [], []
    for i in range(0, len(examples), batch_size):
        batch = examples[i:i + batch_size].to(device)
        logits = model(batch.tokens[:, :-1]).float()  # (B, T-1, d_vocab): position t predicts t+1
        target, mask = batch.tokens[:, 1:], batch.answer_mask[:, 1:]  # (B, T-1)
        exact.append(((logits.argmax(-1) == target) | ~mask).all(1).cpu())
        gold = F.log_softmax(logits, dim=-1).gather(-1, target[..., None])[..., 0]  # (B, T-1)
        logprob.append((gold * mask).sum(1).cpu())
    if not exact:
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0)
    return torch.cat(exact), torch.cat(logprob)


def answer_logprob(model: nn.Module, examples: Examples, batch_size: int = 64) -> torch.Tensor:
    """``(N,)`` total log-probability of each row's answer tokens given its prompt."""
    return answer_scores(model, examples, batch_size)[1]
