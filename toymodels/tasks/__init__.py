"""Synthetic tasks: :mod:`knowledge` (graph + tokenizer), :mod:`twohop` (corpora, formats,
splits, expert sets). Every task yields :class:`Examples`: padded token rows plus the mask
of answer positions, the only positions the loss and exact match look at."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Examples:
    """``tokens: (N, T)`` long, right-padded; ``answer_mask: (N, T)`` bool, True on the
    answer tokens (after the question, EOS included). Each row's answer is one contiguous span that
    ends at its last scored position, whose token is EOS."""

    tokens: Tensor
    answer_mask: Tensor

    def __post_init__(self):
        if self.tokens.shape != self.answer_mask.shape or self.tokens.ndim != 2:
            raise ValueError(f"tokens {tuple(self.tokens.shape)} and answer_mask "
                             f"{tuple(self.answer_mask.shape)}: must be the same (N, T) shape")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index) -> "Examples":
        return Examples(self.tokens[index], self.answer_mask[index])

    def to(self, device) -> "Examples":
        return Examples(self.tokens.to(device), self.answer_mask.to(device))

    @property
    def final_answer_pos(self) -> Tensor:
        """``(N,)`` position of the final answer entity (the token just before EOS)."""
        T = self.tokens.shape[1]
        last = T - 1 - self.answer_mask.flip(1).int().argmax(1)  # (N,) index of EOS
        return last - 1

    @property
    def final_answers(self) -> Tensor:
        """``(N,)`` the gold final answer token of every row."""
        return self.tokens.gather(1, self.final_answer_pos[:, None])[:, 0]

    @staticmethod
    def cat(parts: list["Examples"]) -> "Examples":
        """Concatenate, right-padding every part to the longest row (PAD = 0)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("Examples.cat: nothing to concatenate")
        T = max(p.tokens.shape[1] for p in parts)
        pad = lambda x: torch.nn.functional.pad(x, (0, T - x.shape[1]))  # noqa: E731
        return Examples(torch.cat([pad(p.tokens) for p in parts]),
                        torch.cat([pad(p.answer_mask) for p in parts]))
