"""Stacked training against sequential runs with the same seeds and the same total steps.

- adapters: K = 4, 8, 16 LoRAs (the pipeline's recipe: rank 4, every role, batch 64,
  evaluation every 5 steps) on the quick base's shape, each on its own expert-sized data
  (8 facts; every 4th, a joint LoRA's 32), vs K ``train`` runs one after another.
- bases: S = 4, 8 base models of ``quick_base``'s shape and batch, each on its own corpus
  and seed, vs S ``train`` runs; and the ceiling of that gain where the base's step spends
  its time (``_mlp_ceiling``: one MLP map + GELU, S stacked vs S separate). Measured on 2
  shared CPU cores, 1 thread: the matmuls are compute-bound at batch 256 (a bmm over 4
  stacked weights: 1.05x of 4 matmuls in CPU time, W_in's shape alone), and stacking makes
  every activation 4x larger (10 MB per MLP map), out of cache, so GELU, LayerNorm and Adam
  run slower per element (torch profiler: GELU and its backward ~3.5x the time per element).
  The ceiling row reads 0.75-1.02x across runs there, so S = 4 stays near 1.0x at this
  batch on this CPU.
Early stopping is off (``target_acc=None``) so that both sides do exactly the same steps.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bench.measure import Row, interleaved
from toymodels.lora import inject_lora
from toymodels.model import GPT, role_modules
from toymodels.presets import quick_base, quick_two_hop
from toymodels.stacked_base import train_stacked_models
from toymodels.stacked_lora import train_stacked_loras
from toymodels.tasks import Examples
from toymodels.tasks.twohop import make_pretraining
from toymodels.train import train


def _facts(seed: int, n: int, d_vocab: int) -> Examples:
    """``n`` random 6-token facts whose last two tokens (answer, EOS) are scored."""
    tokens = torch.randint(1, d_vocab, (n, 6), generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(n, 6, dtype=torch.bool)
    mask[:, -2:] = True
    return Examples(tokens, mask)


def _versus(name: str, work: int, stacked, sequential, device: torch.device, quick: bool, warmup: bool,
            unit: str, target: tuple[float, float] | None, note: str) -> Row:
    """Time both sides in turn; ``work`` units (model-steps) each; ``target``: (CPU, GPU) ratio."""
    t = interleaved({"stacked": stacked, "sequential": sequential}, repeats=1 if quick else 3, device=device,
                    warmup=warmup)
    goal = None if target is None else (">=", target[0] if device.type == "cpu" else target[1])
    return Row(name, work / t["stacked"], work / t["sequential"], unit, goal, note)


def stacked_adapters(device: torch.device, quick: bool) -> list[Row]:
    pipe = quick_two_hop()
    base = GPT(pipe.base.model, generator=torch.Generator().manual_seed(0)).requires_grad_(False).to(device)
    steps = 20 if quick else 60
    cfg = dataclasses.replace(pipe.finetune, steps=steps, target_acc=None, target_set=None)
    rows = []
    for K in (4, 8, 16):
        data = [_facts(k, 32 if k % 4 == 3 else 8, pipe.base.model.d_vocab) for k in range(K)]

        def sequential():
            for k, d in enumerate(data):
                gen = torch.Generator().manual_seed(k)
                train(inject_lora(base, pipe.lora, role_modules(base), gen), d, cfg, gen, {"facts": d}, str(device))

        def stacked():
            runs = [(d, torch.Generator().manual_seed(k)) for k, d in enumerate(data)]
            train_stacked_loras(base, runs, pipe.lora, cfg, device=str(device))

        rows.append(_versus(f"stacked_adapters_K{K}", K * steps, stacked, sequential, device, quick, K == 4,
                            "adapter-steps/s", (1.3, 5.0) if K == 8 else None,
                            f"{steps} steps each, batch <= 64 (8 or 32 facts), rank 4 on every role, eval every 5"))
    return rows


def stacked_bases(device: torch.device, quick: bool) -> list[Row]:
    base_cfg = quick_base("latent")
    steps = 3 if quick else 20
    cfg = dataclasses.replace(base_cfg.train, steps=steps, warmup_steps=1, eval_every=steps, target_acc=None,
                              target_set=None)
    rows = []
    for S in (4, 8):
        data = [make_pretraining(base_cfg.task, np.random.default_rng(s)).train for s in range(S)]

        def sequential():
            for s, d in enumerate(data):
                gen = torch.Generator().manual_seed(s)
                train(GPT(base_cfg.model, generator=gen), d, cfg, gen, None, str(device))

        def stacked():
            gens = [torch.Generator().manual_seed(s) for s in range(S)]
            models = [GPT(base_cfg.model, generator=g) for g in gens]
            train_stacked_models(models, data, gens, cfg, None, str(device))

        rows.append(_versus(f"stacked_bases_S{S}", S * steps, stacked, sequential, device, quick, S == 4,
                            "model-steps/s", (1.2, 3.0) if S == 4 else None,
                            f"quick_base shape (d_model 128, 4 layers), batch {cfg.batch_size}, {steps} steps each"))
    rows.append(_mlp_ceiling(base_cfg.model, cfg.batch_size, data[0].tokens.shape[1] - 1, device, quick))
    return rows


def _mlp_ceiling(model, batch: int, T: int, device: torch.device, quick: bool, S: int = 4) -> Row:
    """What stacking S base models can gain where their step spends its time: one MLP input
    map and its GELU (forward + backward) at the base's shape, one batched matmul over S
    stacked weights vs S separate ones. Near 1.0x means the step is compute-bound and S
    models cost S times one: stacking only saves per-op overhead, small at this batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(S, batch * T, model.d_model, generator=g).to(device)
    W = torch.randn(S, model.d_mlp, model.d_model, generator=g).to(device)
    grad = torch.randn(S, batch * T, model.d_mlp, generator=g).to(device)

    def stacked():
        xs, Ws = x.clone().requires_grad_(), W.clone().requires_grad_()
        torch.nn.functional.gelu(torch.bmm(xs, Ws.mT)).backward(grad)  # (S, B * T, d_mlp)

    def sequential():
        for s in range(S):
            xs, Ws = x[s].clone().requires_grad_(), W[s].clone().requires_grad_()
            torch.nn.functional.gelu(xs @ Ws.T).backward(grad[s])  # (B * T, d_mlp)

    t = interleaved({"stacked": stacked, "sequential": sequential}, 5 if quick else 20, device)
    return Row(f"stacked_bases_S{S}_mlp_ceiling", S / t["stacked"], S / t["sequential"], "model-maps/s", None,
               f"one W_in map + GELU, fwd+bwd, {batch}x{T} rows, d_model {model.d_model} -> d_mlp {model.d_mlp}: "
               "bmm over S stacked weights vs S matmuls (what stacking can gain in the base's main cost)")
