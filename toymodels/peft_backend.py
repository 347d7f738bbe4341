"""PEFT as the LoRA trainer of the reuse protocol: a cross-check of our hand-written LoRA.

:func:`train_lora_peft` has :func:`toymodels.protocol.train_lora`'s signature (plug it in as
``Backend(trainer=train_lora_peft)``): it wraps a deep copy of the Hugging Face model with
``peft.get_peft_model`` on the same module paths (``toymodels.lora.target_paths``), rank,
alpha, rsLoRA, dropout and ``fan_in_fan_out`` (GPT-2's ``Conv1D``), then

- draws every ``lora_A`` from the run's generator exactly as :func:`toymodels.lora.inject_lora`
  does (same modules, same order, same init) and leaves PEFT's ``lora_B = 0``, so both
  backends start from the same adapter and consume the generator identically; PEFT's own
  init (from the global RNG) is overwritten, so no global RNG decides anything;
- trains it with :func:`toymodels.train.train` (same loss, batches, optimiser), through
  PEFT's forward pass (its ``LoraLayer``: ``base(x) + lora_B(lora_A(dropout(x))) * scaling``);
- reads the trained factors back from PEFT's modules, with PEFT's own ``scaling``, into our
  :class:`toymodels.adapters.Adapter`, so every reuse method runs on them unchanged.

What differs from our backend is only PEFT's implementation of the LoRA forward and its
scaling; the results agree up to float rounding (tests/test_peft_backend.py says how close).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from theory.merge import Factors
from toymodels.adapters import Adapter
from toymodels.lora import LoRAConfig, LoRALinear, is_fan_in_fan_out, target_paths
from toymodels.pretrained import hf_logits_at
from toymodels.progress import Progress
from toymodels.tasks import Examples
from toymodels.train import TrainConfig, TrainResult, train

__all__ = ["PeftLM", "train_lora_peft"]


class PeftLM(nn.Module):
    """A PEFT-wrapped HF causal LM as ``tokens (B, T) -> logits (B, T, d_vocab)``."""

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self.peft_model = peft_model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.peft_model(input_ids=tokens, use_cache=False).logits

    def logits_at(self, tokens: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """``self(tokens)[at]``, unembedding only where needed (``toymodels.pretrained.hf_logits_at``)."""
        return hf_logits_at(self.peft_model, tokens, at)


def _hf_model(model: nn.Module) -> nn.Module:
    """The HF model behind a :class:`toymodels.pretrained.LogitsLM` (or the model itself)."""
    inner = getattr(model, "_hf", None)
    return inner[0] if isinstance(inner, tuple) else model


def train_lora_peft(backend, data: Examples, lora: LoRAConfig, finetune: TrainConfig, gen: torch.Generator,
                    progress: Progress | None = None) -> tuple[Adapter, TrainResult]:
    """Fine-tune a fresh PEFT LoRA on ``data`` (eval set ``facts`` = ``data``); see the module docstring."""
    import peft

    if lora.init not in ("kaiming_uniform", "gaussian"):
        raise ValueError(f"lora.init={lora.init!r}: the PEFT backend draws kaiming_uniform or gaussian inits")
    hf = _hf_model(backend.model)
    paths = target_paths(lora, backend.roles)
    fan = any(is_fan_in_fan_out(hf.get_submodule(path)) for path in paths)  # GPT-2's Conv1D
    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, use_rslora=lora.rslora, lora_dropout=lora.dropout,
                             target_modules=paths, fan_in_fan_out=fan, bias="none", init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):  # PEFT's init draws from the global RNG: leave it as it was
        model = peft.get_peft_model(copy.deepcopy(hf).requires_grad_(False), config)
    layers = {path: model.base_model.model.get_submodule(path) for path in paths}
    for path in paths:  # inject_lora's draws, in its order
        draw = LoRALinear(hf.get_submodule(path), lora.rank, lora.scale)
        draw.reset_parameters(lora.init, gen)
        with torch.no_grad():
            layers[path].lora_A["default"].weight.copy_(draw.A)
            layers[path].lora_B["default"].weight.zero_()
    wrapped = PeftLM(model)
    result = train(wrapped, data, finetune, gen, {"facts": data}, backend.device, progress, backend.probe_misses)
    factors = {}
    for path, layer in layers.items():
        scale = float(layer.scaling["default"])
        if not math.isclose(scale, lora.scale, rel_tol=1e-6):
            raise ValueError(f"{path}: PEFT scales by {scale}, the LoRA config by {lora.scale}: they disagree")
        factors[path] = Factors(A=layer.lora_A["default"].weight.detach().clone().cpu(),
                                B=layer.lora_B["default"].weight.detach().clone().cpu(), scale=scale)
    return Adapter(lora, factors), result
