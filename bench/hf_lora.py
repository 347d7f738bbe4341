"""Our LoRA injected into a Hugging Face causal LM against PEFT's ``get_peft_model`` on the
same model: training-step time and peak memory of one step. And (:func:`answer_positions`)
logits at the answer positions only against full logits, for a LoRA step and a scoring pass.

Both sides: the same frozen model (a deep copy each), LoRA rank 8 (alpha 16) on every role
of its role map (``toymodels.hf_roles``; Llama: every q/k/v/o/gate/up/down projection),
``model(input_ids).logits``, cross-entropy on every position, backward, AdamW on the LoRA
factors. Models: a tiny random Llama, and SmolLM2-135M when its weights are installed
(``make install-pretrained``).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.measure import Row, Skipped, interleaved, peak_memory
from toymodels.lora import LoRAConfig, inject_lora

RANK, ALPHA = 8, 16.0


def _libs():
    try:
        import peft
        import transformers  # noqa: F401 (the models are transformers')
    except ImportError:
        raise Skipped("needs the 'pretrained' extra (transformers, peft): make install") from None
    return peft


def _step(model: nn.Module, idx: torch.Tensor):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        logits = model(input_ids=idx[:, :-1], use_cache=False).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def compare(hf_model: nn.Module, label: str, batch: tuple[int, int], device: torch.device, repeats: int) -> list[Row]:
    from toymodels.hf_roles import role_map

    peft = _libs()
    hf_model = hf_model.requires_grad_(False).to(device)
    roles = role_map(hf_model)
    targets = tuple(dict.fromkeys(role for role, _ in roles))
    ours = inject_lora(hf_model, LoRAConfig(rank=RANK, alpha=ALPHA, targets=targets), roles,
                       torch.Generator().manual_seed(0))
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, bias="none",
                             target_modules=sorted({path.rsplit(".", 1)[-1] for path in roles.values()}))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # PEFT draws its init from the
        warnings.simplefilter("ignore", FutureWarning)  # global RNG: leave it as it was; and it warns about HF
        theirs = peft.get_peft_model(copy.deepcopy(hf_model), config)
    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    n_theirs = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    if n_ours != n_theirs:
        raise ValueError(f"{label}: our LoRA trains {n_ours} parameters, PEFT's {n_theirs}: not the same adapter")
    B, T = batch
    idx = torch.randint(hf_model.config.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(1)).to(device)
    steps = {"ours": _step(ours, idx), "peft": _step(theirs, idx)}
    t = interleaved(steps, repeats, device)
    # In steady state (after the warm-up: Adam's state exists), the second of two measurements:
    # the profiler cannot see frees of memory allocated before it started, the same for both.
    memory = {name: [peak_memory(step, device) for _ in range(2)][-1] for name, step in steps.items()}
    shape = f"{label}, LoRA r{RANK} on {'/'.join(targets)}, batch {B}x{T}"
    return [Row(f"hf_lora_step_{label}", B * T / t["ours"], B * T / t["peft"], "tokens/s", (">=", 1.0),
                f"{shape}; reference: PEFT get_peft_model"),
            Row(f"hf_lora_peak_memory_{label}", memory["ours"], memory["peft"], "bytes", ("<=", 1.0),
                f"{shape}; peak bytes allocated during one step above the bytes before it")]


class _FullLogits(nn.Module):
    """The model without its ``logits_at``: ``toymodels.train.logits_at`` then indexes the full logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)


def answer_positions(hf_model: nn.Module, label: str, batch: tuple[int, int], device: torch.device,
                     repeats: int) -> list[Row]:
    """A LoRA step and a scoring pass on rows whose last 3 tokens are the answer, with logits
    only at the answer positions (``LogitsLM.logits_at``) against the full logits indexed there."""
    from toymodels.hf_roles import role_map
    from toymodels.pretrained import LogitsLM
    from toymodels.pretrained_metrics import answer_rows
    from toymodels.tasks import Examples
    from toymodels.train import answer_loss

    roles = role_map(hf_model)
    targets = tuple(dict.fromkeys(role for role, _ in roles))
    model = inject_lora(LogitsLM(hf_model.requires_grad_(False)).to(device),
                        LoRAConfig(rank=RANK, alpha=ALPHA, targets=targets), roles, torch.Generator().manual_seed(0))
    B, T = batch
    tokens = torch.randint(hf_model.config.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, -3:] = True
    rows = Examples(tokens, mask).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(m):
        def run():
            loss = answer_loss(m, rows)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run
    full = _FullLogits(model)
    t = interleaved({"fast": step(model), "full": step(full)}, repeats, device)
    s = interleaved({"fast": lambda: answer_rows(model, rows), "full": lambda: answer_rows(full, rows)}, repeats, device)
    shape = f"{label}, batch {B}x{T}, 3 answer tokens per row"
    return [Row(f"hf_answer_logits_step_{label}", B * T / t["fast"], B * T / t["full"], "tokens/s", (">=", 1.0),
                f"{shape}; LoRA step, logits at the answer positions only; reference: full logits"),
            Row(f"hf_answer_logits_score_{label}", B * T / s["fast"], B * T / s["full"], "tokens/s", (">=", 1.0),
                f"{shape}; scoring pass (answer_rows); reference: full logits")]


def tiny(device: torch.device, quick: bool) -> list[Row]:
    _libs()
    from toymodels.pretrained import tiny_llama

    model = tiny_llama(torch.Generator().manual_seed(0), vocab=512, d_model=256, n_layers=4)
    return (compare(model, "tiny_llama", (8, 64), device, 3 if quick else 10)
            + answer_positions(model, "tiny_llama", (16, 16), device, 3 if quick else 10))


def smollm2(device: torch.device, quick: bool, cache_dir: Path) -> list[Row]:
    _libs()
    from toymodels.pretrained import bundled_gguf, load_causal_lm

    try:
        bundled_gguf()
    except FileNotFoundError as exc:
        raise Skipped(str(exc)) from None
    model, _ = load_causal_lm(None, cache_dir)
    return (compare(model, "smollm2_135m", (4, 64), device, 2 if quick else 5)
            + answer_positions(model, "smollm2_135m", (16, 16), device, 2 if quick else 5))
