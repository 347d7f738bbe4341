"""Trainable rows of new-entity tokens beside a LoRA (issue 12, split F).

A LoRA adapts linear maps inside the blocks; a token the base model never saw (split F's new
entities) keeps its random embedding row (``W_E``) and unembedding row (``W_U``), and no LoRA
on the blocks can move them. With rows on, a fine-tune also trains one delta per embedding and
per unembedding row of each new-entity token that occurs in its data, zero at the start, and
nothing else of ``W_E`` / ``W_U``. The deltas belong to the adapter (``Adapter.rows``) and go
where its factors go:

- train: :func:`inject_rows` wraps ``W_E`` / ``W_U`` in :class:`RowDelta` (base frozen, the
  ``(n, d_model)`` delta trainable); :func:`extract_rows` reads the trained deltas;
- reuse: :func:`combine_rows` is the weighted sum of the adapters' deltas per token, a token an
  adapter lacks counting as a zero delta (as a module an adapter lacks,
  ``adapter_merge.per_module``), so ``average`` averages the deltas; merges that act on the
  deltas non-linearly (TIES, DARE, SVD) and routing combine rows by their weights only;
- apply: :func:`fold_rows` adds ``weight * delta`` to the rows of ``W_E.weight`` and
  ``W_U.weight`` (exact: a row delta is additive in the model's output);
- disk: :func:`save_rows` / :func:`load_rows`, a safetensors file beside the LoRA's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

ROWS_NAME = "entity_rows.safetensors"


@dataclass(frozen=True)
class RowDeltas:
    """``tokens: (n,)`` sorted distinct token ids; ``embed`` / ``unembed: (n, d_model)`` the
    deltas added to ``W_E.weight[tokens]`` / ``W_U.weight[tokens]``."""

    tokens: Tensor
    embed: Tensor
    unembed: Tensor

    def __post_init__(self):
        n = self.tokens.shape[0]
        if self.tokens.ndim != 1 or self.embed.shape[0] != n or self.unembed.shape != self.embed.shape:
            raise ValueError(f"entity rows: tokens {tuple(self.tokens.shape)}, embed {tuple(self.embed.shape)}, "
                             f"unembed {tuple(self.unembed.shape)}: must be (n,), (n, d), (n, d)")


class RowDelta(nn.Module):
    """``base`` (an ``nn.Embedding`` or the unembedding ``nn.Linear``), frozen, plus a trainable
    ``delta: (n, d_model)`` on the rows ``tokens`` of its weight ``(d_vocab, d_model)``."""

    def __init__(self, base: nn.Module, tokens: Tensor):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.register_buffer("tokens", tokens.to(base.weight.device))
        self.delta = nn.Parameter(base.weight.new_zeros(len(tokens), base.weight.shape[1]))

    def table(self) -> Tensor:
        """The weight's full delta ``(d_vocab, d_model)``: zero outside ``tokens``."""
        return torch.zeros_like(self.base.weight).index_add(0, self.tokens, self.delta)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.base, nn.Embedding):
            return self.base(x) + nn.functional.embedding(x, self.table())  # (B, T, d_model)
        return self.base(x) + x @ self.table().T  # (B, T, d_vocab)


def rows_in(tokens: Tensor, candidates: Iterable[int]) -> Tensor:
    """The sorted distinct ``candidates`` (e.g. the new-entity tokens) that occur in ``tokens``."""
    present = torch.unique(tokens)
    wanted = torch.tensor(sorted(set(int(c) for c in candidates)), dtype=torch.long)
    return wanted[torch.isin(wanted, present)]


def inject_rows(model: nn.Module, tokens: Tensor, embed: str = "W_E", unembed: str = "W_U") -> nn.Module:
    """Wrap ``model.<embed>`` and ``model.<unembed>`` IN PLACE in :class:`RowDelta` on ``tokens``
    (call it on the fresh copy :func:`toymodels.lora.inject_lora` returns). Returns ``model``."""
    if not len(tokens):
        raise ValueError("entity rows: no new-entity token occurs in the data, nothing to train; turn rows off")
    for path in (embed, unembed):
        model.set_submodule(path, RowDelta(model.get_submodule(path), tokens))
    return model


def extract_rows(model: nn.Module, embed: str = "W_E", unembed: str = "W_U") -> RowDeltas | None:
    """The (detached, cloned) deltas of a model :func:`inject_rows` wrapped; None if it has none."""
    e, u = (getattr(model, path, None) for path in (embed, unembed))
    if not isinstance(e, RowDelta) or not isinstance(u, RowDelta):
        return None
    return RowDeltas(e.tokens.detach().cpu().clone(), e.delta.detach().clone(), u.delta.detach().clone())


def combine_rows(rows: Sequence[RowDeltas | None], weights: Sequence[float] | None = None) -> RowDeltas | None:
    """``sum_i w_i delta_i`` per token over the union of the tokens (``weights=None``: uniform
    ``1/n``); an adapter without a token (or without rows) adds zero there. None if none has rows."""
    if weights is None:
        weights = [1.0 / len(rows)] * len(rows)
    if len(weights) != len(rows):
        raise ValueError(f"entity rows: {len(weights)} weights for {len(rows)} adapters")
    present = [(w, r) for w, r in zip(weights, rows) if r is not None]
    if not present:
        return None
    tokens = torch.unique(torch.cat([r.tokens for _, r in present]))
    d = present[0][1].embed.shape[1]
    embed = present[0][1].embed.new_zeros(len(tokens), d)
    unembed = torch.zeros_like(embed)
    for w, r in present:
        where = torch.searchsorted(tokens, r.tokens)
        embed.index_add_(0, where, float(w) * r.embed.to(embed))
        unembed.index_add_(0, where, float(w) * r.unembed.to(embed))
    return RowDeltas(tokens, embed, unembed)


def fold_rows(model: nn.Module, rows: RowDeltas, weight: float = 1.0, embed: str = "W_E",
              unembed: str = "W_U") -> None:
    """Add ``weight * delta`` to the token rows of ``model``'s embedding and unembedding, in place."""
    with torch.no_grad():
        for path, delta in ((embed, rows.embed), (unembed, rows.unembed)):
            W = model.get_submodule(path).weight  # (d_vocab, d_model)
            if int(rows.tokens.max()) >= W.shape[0] or delta.shape[1] != W.shape[1]:
                raise ValueError(f"entity rows: {path} is {tuple(W.shape)}; rows need tokens < {W.shape[0]} "
                                 f"and width {delta.shape[1]}: the adapter belongs to another model")
            W.index_add_(0, rows.tokens.to(W.device), weight * delta.to(W))


def save_rows(rows: RowDeltas, directory: str | Path) -> Path:
    """Write ``entity_rows.safetensors`` (tokens, embed, unembed) into ``directory``."""
    path = Path(directory) / ROWS_NAME
    save_file({"tokens": rows.tokens.contiguous(), "embed": rows.embed.contiguous(),
               "unembed": rows.unembed.contiguous()}, str(path))
    return path


def load_rows(directory: str | Path) -> RowDeltas | None:
    """The rows :func:`save_rows` wrote into ``directory``; None if it holds none."""
    path = Path(directory) / ROWS_NAME
    if not path.exists():
        return None
    found = load_file(str(path))
    if set(found) != {"tokens", "embed", "unembed"}:
        raise ValueError(f"{path}: holds {sorted(found)}; must hold exactly tokens, embed, unembed")
    return RowDeltas(found["tokens"].long(), found["embed"], found["unembed"])
