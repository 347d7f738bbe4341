"""The toy GPT's init (nanoGPT: N(0, 0.02), residual writers 0.02 / sqrt(2 n_layers)), its
state dict, and the smallest legal config. Written to kill the mutants `make mutation` found
alive."""
from __future__ import annotations

import math

import pytest
import torch

from toymodels.model import GPT, ModelConfig

CFG = ModelConfig(n_layers=2, d_model=64, n_heads=2, d_mlp=64, d_vocab=64, n_ctx=64)


def _model() -> GPT:
    # built inside each test (not a shared fixture) so that mutation testing, which runs only
    # the tests that call a mutated function, credits every test that builds the model
    return GPT(CFG, generator=torch.Generator().manual_seed(0))


def test_every_matrix_has_the_nanogpt_init():
    """Each matrix has >= 4096 entries, so its sample std is within ~2% of the target and its
    mean within ~0.001 of 0; residual writers use 0.02 / sqrt(2 * 2) = 0.01."""
    model, residual = _model(), 0.02 / math.sqrt(2 * CFG.n_layers)
    matrices = {name: p for name, p in model.named_parameters() if p.ndim == 2}
    assert len(matrices) == 3 + 6 * CFG.n_layers  # W_E, W_pos, W_U + 6 per block
    for name, p in matrices.items():
        writes_residual = name.endswith(("attn.W_O.weight", "mlp.W_out.weight"))
        assert p.std().item() == pytest.approx(residual if writes_residual else 0.02, rel=0.1), name
        assert abs(p.mean().item()) < 0.002, name


def test_layernorms_keep_their_identity_init():
    for name, p in _model().named_parameters():
        if p.ndim == 1:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(p == expected), name


def test_state_dict_holds_the_parameters_only():
    """The causal mask is a non-persistent buffer: checkpoints hold weights only, so a model
    saved with one n_ctx mask layout never carries it into another."""
    model = _model()
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()}


def test_the_smallest_config_is_legal():
    cfg = ModelConfig(n_layers=1, d_model=1, n_heads=1, d_mlp=1, d_vocab=1, n_ctx=1)
    logits = GPT(cfg, generator=torch.Generator().manual_seed(0))(torch.zeros(2, 1, dtype=torch.long))
    assert logits.shape == (2, 1, 1)
