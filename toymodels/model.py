"""The from-scratch toy transformer: decoder-only, pre-LayerNorm, causal, learned positions.

Weights are named like the math (``theory/__init__.py``): ``W_E``, ``W_pos``, per block
``attn.W_Q, attn.W_K, attn.W_V, attn.W_O`` and ``mlp.W_in, mlp.W_out``, then ``ln_final``
and ``W_U``. Every projection is its own bias-free ``nn.Linear`` so that a LoRA can target
one role (``q, k, v, o, mlp_in, mlp_out``) in one layer, and so that ``y = x @ W.T`` holds
exactly (no bias to fold when merging). Init follows nanoGPT.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toymodels.config import Config, check_fields, counts

ROLES = ("q", "k", "v", "o", "mlp_in", "mlp_out")
_ROLE_ATTRS = {"q": "attn.W_Q", "k": "attn.W_K", "v": "attn.W_V", "o": "attn.W_O",
               "mlp_in": "mlp.W_in", "mlp_out": "mlp.W_out"}


@dataclass(frozen=True)
class ModelConfig(Config):
    """Sizes of the toy GPT; defaults are the PAPER.md section 2 starting point."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    d_vocab: int = 128
    n_ctx: int = 16

    def __post_init__(self):
        check_fields("model", self, counts(self, dict.fromkeys(
            ("n_layers", "d_model", "n_heads", "d_mlp", "d_vocab", "n_ctx"), 1)))
        # only once n_heads is known to be >= 1 (checks are evaluated before they are reported)
        check_fields("model", self, {"d_model": (self.d_model % self.n_heads == 0,
                                                 f"divisible by model.n_heads={self.n_heads}")})

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


@dataclass
class ActivationCache:
    """Filled by :meth:`GPT.forward` when passed in (tensors keep their graph; detach to store).

    ``resid[l]`` is the residual stream entering block ``l`` and ``resid[n_layers]`` the one
    entering ``ln_final``, each ``(B, T, d_model)``; ``attn_pattern[l]`` is ``(B, H, T, T)``
    (rows: queries, columns: keys); ``mlp_keys[l]`` is the post-GELU hidden ``(B, T, d_mlp)``.
    """

    resid: list[Tensor] = field(default_factory=list)
    attn_pattern: list[Tensor] = field(default_factory=list)
    mlp_keys: list[Tensor] = field(default_factory=list)

    def clear(self) -> None:
        self.resid.clear()
        self.attn_pattern.clear()
        self.mlp_keys.clear()


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.W_Q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.W_K = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.W_V = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.W_O = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        mask = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool))  # (n_ctx, n_ctx)
        self.register_buffer("causal_mask", mask, persistent=False)

    def _heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, d_head)

    def forward(self, x: Tensor, cache: ActivationCache | None = None) -> Tensor:
        B, T, d_model = x.shape  # (B, T, d_model)
        q, k, v = self._heads(self.W_Q(x)), self._heads(self.W_K(x)), self._heads(self.W_V(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)  # (B, H, T, T)
        scores = scores.masked_fill(~self.causal_mask[:T, :T], float("-inf"))
        pattern = torch.softmax(scores, dim=-1)  # (B, H, T, T)
        if cache is not None:
            cache.attn_pattern.append(pattern)
        z = (pattern @ v).transpose(1, 2).reshape(B, T, d_model)  # (B, T, d_model)
        return self.W_O(z)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.W_out = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cache: ActivationCache | None = None) -> Tensor:
        keys = F.gelu(self.W_in(x))  # (B, T, d_mlp)
        if cache is not None:
            cache.mlp_keys.append(keys)
        return self.W_out(keys)  # (B, T, d_model)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cache: ActivationCache | None = None) -> Tensor:
        x = x + self.attn(self.ln_attn(x), cache)
        return x + self.mlp(self.ln_mlp(x), cache)


class GPT(nn.Module):
    """``forward(idx: (B, T) long) -> logits (B, T, d_vocab)``.

    Init (nanoGPT): every weight ``N(0, 0.02)``; the residual-writing ``W_O`` and ``W_out``
    use ``0.02 / sqrt(2 n_layers)`` so the residual stream's variance does not grow with
    depth. ``W_E`` and ``W_U`` are untied so that each is its own matrix in the theory.
    Randomness comes only from ``generator`` (created on CPU; move the model afterwards).
    """

    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.W_pos = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.W_U = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        residual_std = 0.02 / math.sqrt(2 * cfg.n_layers)
        for name, p in self.named_parameters():
            if p.ndim == 2:  # LayerNorm weights/biases keep their (1, 0) init
                std = residual_std if name.endswith(("W_O.weight", "W_out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std, generator=generator)

    def forward(self, idx: Tensor, cache: ActivationCache | None = None) -> Tensor:
        B, T = idx.shape
        if T > self.cfg.n_ctx:
            raise ValueError(f"sequence length {T}: must be <= model.n_ctx={self.cfg.n_ctx}")
        if cache is not None:
            cache.clear()
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.W_E(idx) + self.W_pos(pos)  # (B, T, d_model)
        for block in self.blocks:
            if cache is not None:
                cache.resid.append(x)
            x = block(x, cache)
        if cache is not None:
            cache.resid.append(x)
        return self.W_U(self.ln_final(x))  # (B, T, d_vocab)


def role_modules(model: GPT) -> dict[tuple[str, int], str]:
    """``(role, layer) -> module path`` for every LoRA-targetable linear map of ``model``,
    e.g. ``("q", 0) -> "blocks.0.attn.W_Q"``. The pretrained loader supplies the same kind
    of map for its architecture; :func:`toymodels.lora.inject_lora` only sees the map."""
    return {(role, layer): f"blocks.{layer}.{attr}"
            for layer in range(model.cfg.n_layers) for role, attr in _ROLE_ATTRS.items()}
