"""One training loop for base pretraining and LoRA fine-tuning, plus exact-match evaluation.

Only parameters with ``requires_grad`` train, so the same :func:`train` pretrains a GPT and
fine-tunes the LoRA factors of a frozen one. The loss is cross-entropy on answer tokens
only (``Examples.answer_mask``). AdamW with linear warmup, then cosine or linear decay:
PAPER.md notes that without decay the latent two-hop run later destabilised.

Exact match is computed with teacher forcing in one forward pass: every answer token is the
argmax given the gold prefix  <=>  greedy decoding reproduces the whole answer (by induction
over answer positions), so the two definitions agree (pinned by ``tests/test_train.py``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toymodels.config import Config, check_fields, opt_in
from toymodels.progress import Progress, open_bar
from toymodels.tasks import Examples

Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class TrainConfig(Config):
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1.0
    decay_embeddings: bool = False  # False keeps never-seen tokens at their init scale (split F)
    warmup_steps: int = 100
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    min_lr_frac: float = 0.1  # the decay ends at lr * min_lr_frac
    grad_clip: float | None = 1.0
    eval_every: int = 100
    target_acc: float | None = None  # stop once the target eval set(s) reach it
    target_set: str | None = None  # None: every eval set must reach target_acc
    # "wsd" (warmup-stable-decay): constant lr, then a linear decay over the last decay_frac of
    # the steps (issue 11 item 3: sharpen a noisy constant-lr fit at the end of the budget)
    decay_frac: float = opt_in(0.2)

    def __post_init__(self):
        checks = {
            "steps": (self.steps >= 1, ">= 1"), "batch_size": (self.batch_size >= 1, ">= 1"),
            "lr": (self.lr > 0, "> 0"), "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "warmup_steps": (0 <= self.warmup_steps < self.steps, "in [0, steps)"),
            "min_lr_frac": (0 <= self.min_lr_frac <= 1, "in [0, 1]"),
            "decay_frac": (0 < self.decay_frac <= 1, "in (0, 1]"),
            "grad_clip": (self.grad_clip is None or self.grad_clip > 0, "> 0 or None"),
            "eval_every": (self.eval_every >= 1, ">= 1"),
            "target_acc": (self.target_acc is None or 0 < self.target_acc <= 1, "in (0, 1] or None"),
        }
        check_fields("train", self, checks)
        if self.schedule not in ("cosine", "linear", "constant", "wsd"):
            raise ValueError(f"train.schedule={self.schedule!r}: must be one of cosine, linear, constant, wsd")

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at ``step``: linear warmup, then the decay ``schedule``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "wsd":
            decay_start = self.steps - max(1, round(self.decay_frac * (self.steps - self.warmup_steps)))
            if step < decay_start:
                return 1.0
            return 1 - (1 - self.min_lr_frac) * (step - decay_start + 1) / (self.steps - decay_start)
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1 - progress
        return self.min_lr_frac + (1 - self.min_lr_frac) * shape


def recipe(name: str) -> TrainConfig:
    """The named recipe of the recipe book, ``toymodels.presets.<name>()``; imported when
    called, so that configs' defaults can use it (presets imports the config modules)."""
    from toymodels import presets

    return getattr(presets, name)()


@dataclass
class TrainResult:
    """``curves[name][i]`` is the exact match on eval set ``name`` at ``eval_steps[i]``;
    ``losses[i]`` the mean training loss since the previous evaluation."""

    model: nn.Module
    eval_steps: list[int] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    reached_target: bool = False

    def final(self) -> dict[str, float]:
        return {name: accs[-1] for name, accs in self.curves.items() if accs}


def resolve_device(device: str) -> torch.device:
    """The one place a device name is resolved: ``auto`` -> ``cuda`` when available, else
    ``cpu``; ``cuda`` where there is none is an error naming the fix."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={device!r}: must be one of auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: no CUDA device is available here; use cpu or auto")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def logits_at(model: nn.Module, tokens: Tensor, at: Tensor) -> Tensor:
    """``(n, d_vocab)`` = ``model(tokens)[at]``: the logits at the ``n`` True positions of
    ``at`` ``(B, T)`` bool, row-major. A model with its own ``logits_at(tokens, at)`` (a Hugging
    Face LM, ``toymodels.pretrained.LogitsLM``) computes only those positions' logits: the
    unembedding over a large vocabulary at every position is most of what a loss or a score
    on a few answer tokens would otherwise cost."""
    own = getattr(model, "logits_at", None)
    return own(tokens, at) if own is not None else model(tokens)[at]


def answer_loss(model: nn.Module, batch: Examples) -> Tensor:
    mask = batch.answer_mask[:, 1:]  # (B, T-1): position t predicts token t+1
    return F.cross_entropy(logits_at(model, batch.tokens[:, :-1], mask), batch.tokens[:, 1:][mask])


@torch.no_grad()
def exact_match_rows(model: nn.Module, examples: Examples, batch_size: int = 2048) -> Tensor:
    """``(N,)`` bool: every answer token is the argmax (teacher forcing == greedy, see top)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(examples), batch_size):
        batch = examples[i:i + batch_size].to(device)
        mask = batch.answer_mask[:, 1:]  # (B, T-1)
        ok = torch.ones_like(mask)
        ok[mask] = logits_at(model, batch.tokens[:, :-1], mask).argmax(-1) == batch.tokens[:, 1:][mask]
        out.append(ok.all(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def exact_match(model: nn.Module, examples: Examples) -> float:
    return _eval_rows(model, examples).float().mean().item() if len(examples) else float("nan")


@torch.no_grad()
def greedy_decode(model: nn.Module, examples: Examples, batch_size: int = 2048) -> Tensor:
    """``(N, T)``: ``examples.tokens`` with every answer position replaced by the model's
    greedy prediction given its own earlier predictions (for CoT: its own bridge)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(examples), batch_size):
        batch = examples[i:i + batch_size].to(device)
        tokens, mask = batch.tokens.clone(), batch.answer_mask  # (B, T)
        for t in range(1, tokens.shape[1]):
            if mask[:, t].any():  # fill position t from the prediction at t-1
                pred = model(tokens[:, :t])[:, -1].argmax(-1)  # (B,)
                tokens[:, t] = torch.where(mask[:, t], pred, tokens[:, t])
        out.append(tokens.cpu())
    return torch.cat(out) if out else examples.tokens.clone()


def greedy_final_answers(model: nn.Module, examples: Examples) -> Tensor:
    """``(N,)`` the final answer token the model produces by greedy decoding."""
    return greedy_decode(model, examples).gather(1, examples.final_answer_pos[:, None])[:, 0]


@torch.no_grad()
def final_answer_log_probs(model: nn.Module, examples: Examples, batch_size: int = 2048) -> Tensor:
    """``(N, d_vocab)`` float32 log-softmax of the model's prediction of each row's final answer
    token, teacher forced: the gold prefix up to it (in CoT, the gold bridge) is fed in."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(examples), batch_size):
        batch = examples[i:i + batch_size].to(device)
        logits = model(batch.tokens[:, :-1]).float()  # (B, T-1, d_vocab): position t predicts t+1
        at = (batch.final_answer_pos - 1)[:, None, None].expand(-1, 1, logits.shape[-1])  # (B, 1, d_vocab)
        out.append(F.log_softmax(logits.gather(1, at)[:, 0], dim=-1).cpu())  # (B, d_vocab)
    return torch.cat(out) if out else torch.zeros(0, 0)


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    no_decay = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding) and not cfg.decay_embeddings:
            no_decay.add(id(module.weight))
    decay, keep = [], []
    for p in model.parameters():
        if p.requires_grad:
            (keep if p.ndim < 2 or id(p) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]


# train(probe_misses=...) for the protocols that keep no training curves (pretrained models,
# where a full evaluation of a LoRA's own rows costs several training steps)
MISS_PROBE_ROWS = 16


class _MissProbe:
    """``train(probe_misses=k)``'s shortcut for one eval set: the rows its last full evaluation
    missed; :meth:`out_of_reach` re-scores up to ``k`` of them alone."""

    def __init__(self, examples: Examples, k: int, target_acc: float):
        self.examples, self.k, self.target_acc = examples, k, target_acc
        self.missed = torch.zeros(0, dtype=torch.long)

    def out_of_reach(self, model: nn.Module) -> bool:
        """True if the probed rows that still miss alone keep the set below ``target_acc``
        (by a margin, so that a borderline case is left to the full evaluation)."""
        if not len(self.missed):
            return False
        misses = int((~_eval_rows(model, self.examples[self.missed[:self.k]])).sum())
        n = len(self.examples)
        return (n - misses) / n < self.target_acc - 1e-6

    def full(self, model: nn.Module) -> float:
        ok = _eval_rows(model, self.examples)
        self.missed = (~ok).nonzero().flatten()
        return ok.float().mean().item() if len(ok) else float("nan")


def _eval_rows(model: nn.Module, examples: Examples) -> Tensor:
    """:func:`exact_match_rows` in eval mode (the model's mode restored after)."""
    was_training = model.training
    model.eval()
    ok = exact_match_rows(model, examples)
    model.train(was_training)
    return ok


def train(model: nn.Module, data: Examples, cfg: TrainConfig, generator: torch.Generator,
          eval_sets: dict[str, Examples] | None = None, device: str = "auto",
          progress: Progress | None = None, probe_misses: int = 0) -> TrainResult:
    """Train ``model`` in place on ``data``; batches are drawn by ``generator`` (CPU).
    ``progress`` (toymodels/progress.py) gets a "train" bar over the steps.

    ``probe_misses = k > 0`` (with a ``target_acc``) saves evaluation when the caller keeps no
    curves: an eval first re-scores alone up to ``k`` rows of a target set that its last full
    evaluation missed; if those that still miss keep the set below ``target_acc``, the target
    is not reached and the target sets' curve point is NaN (not measured), not their accuracy.
    Otherwise, and always at the last step,
    every row is scored as without it, so the stopping step, the losses and the final scores
    are the same (up to a row at an argmax tie scoring differently in a smaller batch)."""
    eval_sets = eval_sets or {}
    if cfg.target_set is not None and cfg.target_set not in eval_sets:
        raise ValueError(f"train.target_set={cfg.target_set!r}: must be one of {sorted(eval_sets)}")
    if not isinstance(probe_misses, int) or probe_misses < 0:
        raise ValueError(f"probe_misses={probe_misses!r}: must be an integer >= 0 (0: score every row at every eval)")
    targets = [cfg.target_set] if cfg.target_set else list(eval_sets)
    probes = {name: _MissProbe(eval_sets[name], probe_misses, cfg.target_acc)
              for name in targets} if probe_misses and cfg.target_acc is not None else {}
    dev = resolve_device(device)
    model.to(dev)
    data = data.to(dev)
    groups = _param_groups(model, cfg)
    if not any(g["params"] for g in groups):
        raise ValueError("train: the model has no parameter with requires_grad=True")
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor)
    result = TrainResult(model, curves={name: [] for name in eval_sets})
    start, order, cursor, running = time.perf_counter(), torch.empty(0, dtype=torch.long), 0, []
    bar = open_bar(progress, "train", cfg.steps)
    model.train()
    for step in range(1, cfg.steps + 1):
        if cursor + cfg.batch_size > len(order):  # a fresh permutation per epoch
            order, cursor = torch.randperm(len(data), generator=generator).to(dev), 0
        batch = data[order[cursor:cursor + cfg.batch_size]]
        cursor += cfg.batch_size
        loss = answer_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
        opt.step()
        sched.step()
        running.append(loss.detach())  # read once per eval window, not per step (no host sync)
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            result.eval_steps.append(step)
            window = torch.stack(running).tolist()  # the same floats .item() gave, summed the same way
            result.losses.append(sum(window) / len(window))
            running = []
            unreached = step < cfg.steps and any(p.out_of_reach(model) for p in probes.values())
            for name, ex in eval_sets.items():
                probe = probes.get(name)
                if probe is None:
                    result.curves[name].append(exact_match(model, ex))
                else:
                    result.curves[name].append(float("nan") if unreached else probe.full(model))
            bar.set_postfix_str(", ".join([f"loss {result.losses[-1]:.3f}"] + [  # NaN: a probe saw misses
                f"{k} {v:.2f}" if v == v else f"{k} < {cfg.target_acc:.2f}" for k, v in result.final().items()]))
            if cfg.target_acc is not None and targets and all(
                    result.curves[t][-1] >= cfg.target_acc for t in targets):
                result.reached_target = True
                break
    bar.close()
    result.steps, result.seconds = step, time.perf_counter() - start
    return result
