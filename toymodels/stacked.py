"""Stacked training: G independent models in one forward/backward per step (issue 11).

:func:`train_stacked` runs :func:`toymodels.train.train` for G models at once. Every model
("group") keeps its own data, its own ``torch.Generator`` for batch order, its own AdamW
state, gradient clipping and stop rule, and the result equals G sequential ``train`` runs
up to float rounding (``tests/test_stacked.py``). Two engines plug into it:
:mod:`toymodels.stacked_lora` (K LoRAs on one frozen base) and
:mod:`toymodels.stacked_base` (S base models, ``torch.func.vmap``).

How each piece matches ``train``:
- batches: group g draws ``randperm(len(data_g), generator=g)`` at the same steps as
  ``train`` (a fresh permutation when the epoch's rest is shorter than a batch), so its
  generator ends in the same state. Draws for a whole evaluation window are made up front
  and moved to the device once: the step loop never waits on the host.
- unequal data: every group's rows are right-padded to the longest row and its batch to the
  largest batch (``min(batch_size, len(data_g))``) with PAD rows whose answer mask is False;
  causal attention never looks right, and masked positions carry zero loss and gradient.
- loss: each group's mean cross-entropy on its answer tokens; the step minimises their sum,
  and since groups share no trainable parameter, each group gets its own gradient.
- clipping: ``clip_grad_norm_`` per group (norm over that group's parameters only).
- AdamW: torch's update written out with a leading group axis (betas 0.9/0.98, eps 1e-8 as
  in ``train``; lr from :meth:`TrainConfig.lr_factor` exactly as ``LambdaLR`` applies it).
  All running groups started at step 1, so they share the step count of the bias correction.
- stopping: at each evaluation a group that reached ``target_acc`` is finished (its model
  built by ``finish``) and dropped from every stacked tensor, so it neither updates nor costs
  compute while the others go on.
The host reads results once per evaluation window (accuracies, mean losses); no ``.item()``
per step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toymodels.tasks import Examples
from toymodels.train import TrainConfig, TrainResult, _param_groups, resolve_device

BETAS, EPS = (0.9, 0.98), 1e-8  # toymodels.train.train's AdamW
Forward = Callable[[dict[str, Tensor], Tensor], Tensor]  # (state, tokens (G, B, T)) -> logits (G, B, T, V)
Finish = Callable[[int, dict[str, Tensor]], nn.Module]  # (group index, its trained state) -> model


@dataclass
class Packed:
    """G example sets as one tensor: ``tokens, mask (G, N_max + 1, T_max)``; row ``N_max`` of
    every group is a PAD row (answer mask False) that fills short batches; ``n (G,)``."""

    tokens: Tensor
    mask: Tensor
    n: list[int]

    @staticmethod
    def of(sets: Sequence[Examples], device: torch.device) -> "Packed":
        T, N = max(e.tokens.shape[1] for e in sets), max(len(e) for e in sets)
        tokens = torch.zeros(len(sets), N + 1, T, dtype=torch.long)  # (G, N + 1, T)
        mask = torch.zeros(len(sets), N + 1, T, dtype=torch.bool)
        for g, e in enumerate(sets):
            tokens[g, :len(e), :e.tokens.shape[1]] = e.tokens
            mask[g, :len(e), :e.tokens.shape[1]] = e.answer_mask
        return Packed(tokens.to(device), mask.to(device), [len(e) for e in sets])

    def keep(self, idx: list[int]) -> "Packed":
        return Packed(self.tokens[idx], self.mask[idx], [self.n[i] for i in idx])


class _Order:
    """``train``'s batch order for one group: a fresh permutation per epoch from its generator."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.order, self.cursor = torch.empty(0, dtype=torch.long), 0

    def next(self, batch_size: int) -> Tensor:
        if self.cursor + batch_size > len(self.order):
            self.order, self.cursor = torch.randperm(self.n, generator=self.generator), 0
        rows = self.order[self.cursor:self.cursor + batch_size]
        self.cursor += batch_size
        return rows


def group_answer_loss(logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """``(G,)`` per-group mean cross-entropy on answer tokens: ``logits (G, B, T-1, V)`` predict
    ``tokens[:, :, 1:]`` where ``mask[:, :, 1:]`` (``toymodels.train.answer_loss`` per group)."""
    G, V = logits.shape[0], logits.shape[-1]
    target, m = tokens[:, :, 1:], mask[:, :, 1:].to(logits.dtype)  # (G, B, T-1)
    ce = F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), reduction="none")  # (G*B*(T-1),)
    return (ce.view(G, -1) * m.view(G, -1)).sum(1) / m.view(G, -1).sum(1)


@torch.no_grad()
def group_exact_match(forward: Forward, state: dict[str, Tensor], data: Packed, rows: int = 4096) -> Tensor:
    """``(G,)`` exact match of every group on its own rows (teacher forcing, as
    ``toymodels.train.exact_match``), at most ``rows`` rows per forward pass."""
    G, N = data.tokens.shape[:2]
    chunk = max(1, rows // G)
    hits = torch.zeros(G, device=data.tokens.device)
    for i in range(0, N - 1, chunk):  # the last row is PAD
        tokens, mask = data.tokens[:, i:min(i + chunk, N - 1)], data.mask[:, i:min(i + chunk, N - 1)]
        pred = forward(state, tokens[:, :, :-1]).argmax(-1)  # (G, b, T-1)
        ok = ((pred == tokens[:, :, 1:]) | ~mask[:, :, 1:]).all(-1)  # (G, b)
        valid = torch.arange(i, i + ok.shape[1], device=ok.device)[None] < torch.tensor(data.n, device=ok.device)[:, None]
        hits += (ok & valid).sum(1)
    return hits / torch.tensor(data.n, device=hits.device)


def decay_flags(model: nn.Module, cfg: TrainConfig) -> dict[str, bool]:
    """name -> whether ``train`` decays this trainable parameter (its own ``_param_groups``)."""
    decayed = {id(p) for p in _param_groups(model, cfg)[0]["params"]}
    return {name: id(p) in decayed for name, p in model.named_parameters() if p.requires_grad}


def _clip_(grads: list[Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` per group: scale group g's gradients by ``min(1, max/(norm_g + 1e-6))``."""
    norm = sum(g.square().flatten(1).sum(1) for g in grads).sqrt()  # (G,)
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))


def _adamw_(params: list[Tensor], grads: list[Tensor], m: list[Tensor], v: list[Tensor],
            decays: list[float], lr: float, step: int) -> None:
    """torch's single-tensor AdamW step (``torch.optim.adam._single_tensor_adam``), unchanged
    except that every tensor carries a leading group axis."""
    (b1, b2), bc1, bc2 = BETAS, 1 - BETAS[0] ** step, 1 - BETAS[1] ** step
    for p, g, m_, v_, wd in zip(params, grads, m, v, decays):
        if wd:
            p.mul_(1 - lr * wd)
        m_.lerp_(g, 1 - b1)
        v_.mul_(b2).addcmul_(g, g, value=1 - b2)
        p.addcdiv_(m_, (v_.sqrt() / bc2 ** 0.5).add_(EPS), value=-lr / bc1)


@dataclass
class _Stack:
    """Everything with a leading group axis, for the groups still training (``active``)."""

    active: list[int]
    params: dict[str, Tensor]
    frozen: dict[str, Tensor]
    m: dict[str, Tensor]
    v: dict[str, Tensor]
    data: Packed
    evals: dict[str, Packed]
    orders: list[_Order]

    def keep(self, idx: list[int]) -> "_Stack":
        sub = lambda d: {k: t[idx] for k, t in d.items()}  # noqa: E731
        return _Stack([self.active[j] for j in idx],
                      {k: p[idx].detach().requires_grad_(True) for k, p in self.params.items()},
                      sub(self.frozen), sub(self.m), sub(self.v), self.data.keep(idx),
                      {n: e.keep(idx) for n, e in self.evals.items()}, [self.orders[j] for j in idx])

    def window(self, steps: int, batch_size: int, device: torch.device) -> Tensor:
        """``(steps, G, B)`` row indices of the next ``steps`` batches, drawn on the host in
        ``train``'s order; short batches are filled with the PAD row."""
        rows = [[o.next(batch_size) for o in self.orders] for _ in range(steps)]
        B = max(len(r) for window in rows for r in window)
        idx = torch.full((steps, len(self.orders), B), self.data.tokens.shape[1] - 1, dtype=torch.long)
        for w, window in enumerate(rows):
            for g, r in enumerate(window):
                idx[w, g, :len(r)] = r
        return idx.to(device)


def train_stacked(forward: Forward, params: dict[str, Tensor], decay: dict[str, bool],
                  data: Sequence[Examples], generators: Sequence[torch.Generator], cfg: TrainConfig,
                  finish: Finish, eval_sets: Sequence[dict[str, Examples]] | None = None,
                  frozen: dict[str, Tensor] | None = None, device: str = "auto") -> list[TrainResult]:
    """Train G models at once. ``params``: name -> ``(G, ...)`` trainable tensor; ``frozen``:
    name -> ``(G, ...)`` per-group constants; ``forward(params | frozen, tokens (G, B, T))``
    gives ``(G, B, T, V)`` logits; ``decay[name]``: whether weight decay applies;
    ``finish(g, state_g)`` builds group g's model when it stops. ``eval_sets[g]`` are group
    g's evaluation sets (the same names for every group). Returns one ``TrainResult`` per group."""
    G, dev = len(data), resolve_device(device)
    eval_sets = list(eval_sets) if eval_sets is not None else [{} for _ in range(G)]
    if not G or len(generators) != G or len(eval_sets) != G:
        raise ValueError(f"train_stacked: got {len(data)} data sets, {len(generators)} generators and "
                         f"{len(eval_sets)} eval-set dicts; need one of each per model (>= 1)")
    names = list(eval_sets[0])
    if any(list(e) != names for e in eval_sets):
        raise ValueError(f"eval_sets: every model needs the same eval set names, got {[list(e) for e in eval_sets]}")
    if cfg.target_set is not None and cfg.target_set not in names:
        raise ValueError(f"train.target_set={cfg.target_set!r}: must be one of {sorted(names)}")
    if any(len(d) == 0 for d in data):
        raise ValueError("train_stacked: a model's training data is empty")
    for name, p in {**params, **(frozen or {})}.items():
        if p.shape[0] != G:
            raise ValueError(f"{name}: leading (group) axis is {p.shape[0]}, need {G}")
    params = {k: p.detach().to(dev).clone().requires_grad_(True) for k, p in params.items()}
    zeros = {k: torch.zeros_like(p) for k, p in params.items()}
    st = _Stack(list(range(G)), params, {k: p.detach().to(dev) for k, p in (frozen or {}).items()},
                zeros, {k: z.clone() for k, z in zeros.items()}, Packed.of(data, dev),
                {n: Packed.of([e[n] for e in eval_sets], dev) for n in names},
                [_Order(len(d), gen) for d, gen in zip(data, generators)])
    decays = [cfg.weight_decay if decay[k] else 0.0 for k in params]
    results: list[TrainResult | None] = [None] * G
    curves, losses, eval_steps = [{n: [] for n in names} for _ in range(G)], [[] for _ in range(G)], []
    targets = [cfg.target_set] if cfg.target_set else names
    start, step = time.perf_counter(), 0
    while st.active:
        idx = st.window(min(cfg.eval_every - step % cfg.eval_every, cfg.steps - step), cfg.batch_size, dev)
        gi = torch.arange(len(st.active), device=dev)[:, None]  # (G, 1)
        window_losses = []
        for rows in idx:  # (G, B)
            step += 1
            tokens, mask = st.data.tokens[gi, rows], st.data.mask[gi, rows]  # (G, B, T)
            loss = group_answer_loss(forward(st.params | st.frozen, tokens[:, :, :-1]), tokens, mask)  # (G,)
            grads = list(torch.autograd.grad(loss.sum(), list(st.params.values()), allow_unused=True,
                                             materialize_grads=True))
            with torch.no_grad():
                if cfg.grad_clip is not None:
                    _clip_(grads, cfg.grad_clip)
                _adamw_(list(st.params.values()), grads, list(st.m.values()), list(st.v.values()), decays,
                        cfg.lr * cfg.lr_factor(step - 1), step)
            window_losses.append(loss.detach())
        state = st.params | st.frozen
        accs = torch.stack([group_exact_match(forward, state, st.evals[n]) for n in names]).cpu() if names else None
        mean_loss = torch.stack(window_losses).mean(0).cpu()  # (G,): with accs, the one host read per window
        eval_steps.append(step)
        stop = []
        for j, g in enumerate(st.active):
            losses[g].append(float(mean_loss[j]))
            for i, n in enumerate(names):
                curves[g][n].append(float(accs[i, j]))
            reached = cfg.target_acc is not None and bool(targets) and all(
                curves[g][t][-1] >= cfg.target_acc for t in targets)
            if reached or step == cfg.steps:  # train's stop rule, per group
                model = finish(g, {k: t[j].detach().clone() for k, t in state.items()})
                results[g] = TrainResult(model, list(eval_steps), curves[g], losses[g], step, 0.0, reached)
                stop.append(j)
        if stop:
            st = st.keep([j for j in range(len(st.active)) if j not in stop])
    seconds = time.perf_counter() - start
    for r in results:
        r.seconds = seconds  # wall time of the whole stacked run, shared by its models
    return results
