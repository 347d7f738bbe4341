"""Our toy GPT's training step against a reference of the same shape built from
``torch.nn.TransformerEncoderLayer`` (tokens/s), and both against the machine's dense fp32
matmul peak measured in the same loop (MFU).

Both models: pre-LayerNorm, GELU MLP, bias-free projections, learned positions, untied
unembedding, causal attention; both take the same step (cross-entropy on every position,
backward, AdamW). The reference differs only in using PyTorch's fused attention module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.measure import Row, interleaved, matmul
from toymodels.model import GPT, ModelConfig


class Reference(nn.Module):
    """The toy GPT's shape from ``nn.TransformerEncoder`` (norm_first, GELU, no biases)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_E, self.W_pos = nn.Embedding(cfg.d_vocab, cfg.d_model), nn.Embedding(cfg.n_ctx, cfg.d_model)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_mlp, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True, bias=False)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.W_U = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(cfg.n_ctx), persistent=False)

    def forward(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]
        x = self.W_E(idx) + self.W_pos(torch.arange(T, device=idx.device))  # (B, T, d_model)
        x = self.encoder(x, mask=self.mask[:T, :T], is_causal=True)
        return self.W_U(self.ln_final(x))  # (B, T, d_vocab)


def train_flops(cfg: ModelConfig, tokens: int) -> float:
    """FLOPs of one training step (backward = 2x forward): per token and layer the four
    attention maps, the two MLP maps and the full ``T x T`` score and mixing products, plus
    the unembedding."""
    d, T = cfg.d_model, cfg.n_ctx
    per_token = cfg.n_layers * (2 * 4 * d * d + 2 * 2 * d * cfg.d_mlp + 2 * 2 * T * d) + 2 * d * cfg.d_vocab
    return 3.0 * per_token * tokens


def _step(model: nn.Module, idx: Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        logits = model(idx[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def toy_step(device: torch.device, quick: bool) -> list[Row]:
    widths = (256,) if quick else (128, 256)
    rows = []
    for d in widths:
        cfg = ModelConfig(n_layers=4, d_model=d, n_heads=4, d_mlp=4 * d, d_vocab=512, n_ctx=16)
        batch = 32 if quick else 64
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(cfg.d_vocab, (batch, cfg.n_ctx + 1), generator=g).to(device)
        ours, ref = GPT(cfg, generator=g).to(device), Reference(cfg).to(device)
        peak_fn, peak_flops = matmul(2048 if device.type == "cpu" else 8192, device)
        t = interleaved({"ours": _step(ours, idx), "ref": _step(ref, idx), "peak": peak_fn},
                        repeats=3 if quick else 10, device=device)
        tokens, flops = batch * cfg.n_ctx, train_flops(cfg, batch * cfg.n_ctx)
        shape = f"d_model {d}, 4 layers, batch {batch}x{cfg.n_ctx}"
        rows.append(Row(f"toy_step_d{d}", tokens / t["ours"], tokens / t["ref"], "tokens/s",
                        (">=", 1.0), f"{shape}; reference: nn.TransformerEncoderLayer"))
        mfu_target = (">=", 0.5) if device.type == "cpu" and d >= 256 else None
        peak = peak_flops / t["peak"]
        rows.append(Row(f"toy_step_mfu_d{d}", flops / t["ours"], peak, "FLOP/s", mfu_target,
                        f"{shape}; reference: dense fp32 matmul peak, same loop; "
                        f"nn.TransformerEncoder reaches {flops / t['ref'] / peak:.2f}"))
    return rows

