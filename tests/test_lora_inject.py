"""LoRA config limits and what inject_lora passes on to each LoRALinear (init, dropout,
generator), with exact messages. Written to kill the mutants `make mutation` found alive."""
from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from toymodels.lora import LoRAConfig, LoRALinear, inject_lora, lora_modules
from toymodels.model import GPT, role_modules
from conftest import TINY_GPT, seeded


@pytest.fixture(scope="module")
def base() -> GPT:
    return GPT(TINY_GPT, generator=seeded(0))


def test_rank_1_is_legal(base):
    cfg = LoRAConfig(rank=1, targets=("q",))
    model = inject_lora(base, cfg, role_modules(base), seeded(1))
    assert cfg.scale == 8.0 and all(m.A.shape[0] == 1 for m in lora_modules(model).values())


@pytest.mark.parametrize("layers", [(-1,), ()])
def test_layers_must_be_none_or_non_negative(layers):
    message = f"lora.layers={layers!r}: must be None (all) or layer indices >= 0"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        LoRAConfig(layers=layers)


@pytest.mark.parametrize("init", ["kaiming_uniform", "gaussian"])
def test_injection_uses_the_configured_init(base, init):
    """kaiming_uniform(a=sqrt 5) is bounded by 1/sqrt(d_in); gaussian is N(0, 1/r^2) with
    r = 2, i.e. std 0.5, which exceeds every kaiming bound here (d_in >= 16 -> <= 0.25)."""
    model = inject_lora(base, LoRAConfig(rank=2, init=init), role_modules(base), seeded(1))
    loras = lora_modules(model).values()
    if init == "kaiming_uniform":
        assert all(m.A.abs().max() <= 1 / math.sqrt(m.A.shape[1]) for m in loras)
    else:
        pooled = torch.cat([m.A.flatten() for m in loras])  # 24 modules x 2 x (16 or 32) entries
        assert pooled.std().item() == pytest.approx(0.5, rel=0.1)


def test_gaussian_init_is_drawn_from_the_generator():
    layers = [LoRALinear(nn.Linear(8, 6, bias=False), 2, 1.0) for _ in range(2)]
    for layer in layers:
        layer.reset_parameters("gaussian", seeded(5))
    assert torch.equal(layers[0].A, layers[1].A)


def test_injection_passes_the_dropout_on(base):
    """With dropout 0.5 and nonzero B, two training-mode passes differ; eval mode is exact."""
    model = inject_lora(base, LoRAConfig(rank=2, dropout=0.5, targets=("v",)), role_modules(base), seeded(1))
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.B.normal_(generator=seeded(2))
    idx = torch.randint(0, TINY_GPT.d_vocab, (2, 6), generator=seeded(3))
    model.train()
    assert not torch.equal(model(idx), model(idx))
    model.eval()
    assert torch.equal(model(idx), model(idx))


def test_injection_into_a_non_linear_module_names_its_type(base):
    with pytest.raises(ValueError, match=r"^blocks.0.ln_attn: is a LayerNorm, LoRA wraps nn.Linear or Conv1D only$"):
        inject_lora(base, LoRAConfig(targets=("q",)), {("q", 0): "blocks.0.ln_attn"}, seeded(1))
