"""RANK-1 in a trained transformer: how many new facts ONE rank-r LoRA on one matrix stores.

Setting (notation of ``theory/__init__.py`` and ``theory/rank.py``). The LoRA sits on
``W_out`` (role ``mlp_out``) of the LAST block. Its input keys ``k = GELU(W_in LN(x))``
are computed upstream of it, so they do not move while it trains, and at the position
that predicts the answer it adds exactly ``DW k`` to the residual stream, which is then
read out as ``logits = W_U LN(x + DW k)``. This is the one-matrix setting of RANK-1 with
the trained model's keys ``K: (d_mlp, N)`` and output changes in the residual stream
(``d_model``), followed by a fixed nonlinear readout (LayerNorm, unembedding, argmax).

The facts are ``N`` counterfactual edits of atomic facts the base model knows:
``(e, r) -> new != r(e)``, new answers spread over all entities (distinct when N <= E).

What RANK-1 predicts here, and what it does not:

- Exact storage. Facts whose required output changes are linearly independent can be made
  EXACT by a rank-r update at most r at a time (``rank(DW) >= rank(D)``); the best rank-r
  error ``min ||DW K - D||_F`` is the Eckart-Young tail of D when the keys are independent.
  :data:`bound` is that line, ``min(r, N)``.
- Recall is ARGMAX: a fact counts as stored when the new answer gets the top logit. That
  needs a margin, not an exact change; the change that achieves it is not unique; and the
  readout is nonlinear (LayerNorm). So RANK-1 does NOT imply "at most r facts recalled"
  (e.g. rank-2 changes whose columns lie on a circle can give many distinct argmaxes), and
  recall above ``min(r, N)`` does not contradict it. What RANK-1 does give is a theory
  curve for recall: take the required changes ``D*`` (per fact, a small-norm residual
  change that gives the new answer a logit margin: P1's minimum-norm choice, up to the
  penalty method; any full-rank update realises it since the keys are independent),
  truncate them to rank r (Eckart-Young, via
  :func:`theory.rank.optimal_update`) and count the facts the truncation still recalls.
- The trained adapter's ``||DW K - D*||_F`` can never fall below the tail of ``D*`` (it has
  rank <= r); how far above it lies says how differently SGD spends its rank.

Pure: no printing, files or global RNG; randomness from explicit generators.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from theory.merge import eckart_young_error, numerical_rank
from theory.rank import FactSystem, optimal_update
from toymodels.adapters import extract_adapter
from toymodels.config import Config
from toymodels.lora import LoRAConfig, inject_lora
from toymodels.model import GPT, ActivationCache, role_modules
from toymodels.tasks import Examples
from toymodels.tasks.knowledge import atomic_row, encode
from toymodels.tasks.twohop import Pretraining
from toymodels.train import TrainConfig, exact_match, recipe, train


@dataclass(frozen=True)
class CapacityConfig(Config):
    """``n_facts`` edits stored by one LoRA on the last block's ``mlp_out``; ``margin`` is
    the logit margin the required changes D* give each new answer."""

    n_facts: int = 64
    margin: float = 1.0
    solve_steps: int = 300  # Adam steps for D* (a small problem: N x d_model numbers)
    finetune: TrainConfig = field(default_factory=lambda: recipe("fast_finetune"))  # toymodels/presets.py

    def __post_init__(self):
        if not isinstance(self.n_facts, int) or self.n_facts < 1:
            raise ValueError(f"capacity.n_facts={self.n_facts!r}: must be an integer >= 1")
        if not self.margin > 0:
            raise ValueError(f"capacity.margin={self.margin!r}: must be > 0")
        if self.solve_steps < 1:
            raise ValueError(f"capacity.solve_steps={self.solve_steps!r}: must be >= 1")


def bound(rank: int, n_facts: int) -> int:
    """RANK-1's exact-storage line: independent changes made exact by a rank-r update."""
    return min(rank, n_facts)


def lora_config(n_layers: int, rank: int) -> LoRAConfig:
    """A rank-``rank`` LoRA on the last block's ``mlp_out``, rank-stabilised (rsLoRA scale
    ``alpha / sqrt(r)``, alpha 4: scale 2 at r = 4 as in the two-hop presets), so that a
    rank sweep does not also sweep the effective step size."""
    return LoRAConfig(rank=rank, alpha=4.0, rslora=True, targets=("mlp_out",), layers=(n_layers - 1,))


def edit_facts(pre: Pretraining, n_facts: int, rng: np.random.Generator) -> tuple[Examples, np.ndarray]:
    """``n_facts`` edits of distinct atomic facts ``(e, r)``: rows ``BOS e r SEP new EOS``
    and the ``(N, 4)`` token array ``(e, r, old, new)``; ``new != old`` for every fact."""
    G, tok = pre.graph.objects, pre.graph.tokenizer
    E, R = G.shape
    if n_facts > E * R:
        raise ValueError(f"capacity.n_facts={n_facts}: the graph has only {E * R} atomic facts")
    pairs = np.stack(np.divmod(rng.choice(E * R, n_facts, replace=False), R), 1)  # (N, 2) (e, r)
    old = G[pairs[:, 0], pairs[:, 1]]
    new = np.resize(rng.permutation(E), n_facts)
    for _ in range(1000):
        if not np.any(new == old):
            break
        new = rng.permutation(new)
    else:
        raise ValueError("could not draw new answers that differ from the old ones: use more entities")
    to_tok = np.vectorize(tok.entity, otypes=[np.int64])
    facts = np.stack([to_tok(pairs[:, 0]), pairs[:, 1], to_tok(old), to_tok(new)], 1)
    return encode([atomic_row(tok, int(e), int(r), int(n)) for e, r, _, n in facts]), facts


@dataclass(frozen=True)
class Readout:
    """The last block at the answer-predicting position of each fact: ``keys: (N, d_mlp)``
    (rows are the columns of K), ``resid: (N, d_model)`` entering ``ln_final``, ``answers: (N,)``."""

    keys: Tensor
    resid: Tensor
    answers: Tensor


@torch.no_grad()
def readout(model: GPT, examples: Examples) -> Readout:
    device = next(model.parameters()).device
    batch, cache = examples.to(device), ActivationCache()
    model.eval()
    model(batch.tokens[:, :-1], cache)
    rows = torch.arange(len(batch), device=device)
    pos = batch.final_answer_pos - 1  # (N,) the position whose logits predict the answer
    return Readout(cache.mlp_keys[-1][rows, pos], cache.resid[-1][rows, pos], batch.final_answers)


def logits(model: GPT, state: Readout, change: Tensor) -> Tensor:
    """``W_U LN(x + change)``: ``(N, d_vocab)`` for residual changes ``change: (N, d_model)``."""
    return model.W_U(model.ln_final(state.resid + change.to(state.resid)))


def margins(model: GPT, state: Readout, change: Tensor) -> Tensor:
    """``(N,)`` new answer's logit minus the best other logit (> 0: recalled) after ``change``."""
    z = logits(model, state, change)  # (N, d_vocab)
    target = z.gather(1, state.answers[:, None])[:, 0]
    return target - z.scatter(1, state.answers[:, None], float("-inf")).amax(1)


@torch.no_grad()
def recalled(model: GPT, state: Readout, change: Tensor) -> Tensor:
    """``(N,)`` bool: the new answer is the argmax after adding ``change`` to the residual."""
    return logits(model, state, change).argmax(-1) == state.answers


def required_changes(model: GPT, state: Readout, margin: float, steps: int) -> Tensor:
    """``D*: (N, d_model)``: per fact, a small-norm residual change aiming at logit margin
    ``margin`` (Adam from 0 on ``hinge^2 + 1e-3 ||d||^2``; deterministic). LayerNorm bounds
    the logits any residual change can produce, so the margin reached can fall short of
    ``margin``; :func:`measure_capacity` reports the smallest one reached."""
    D = torch.zeros_like(state.resid, requires_grad=True)
    opt = torch.optim.Adam([D], lr=0.05)
    for _ in range(steps):
        loss = torch.relu(margin - margins(model, state, D)).square().mean() + 1e-3 * D.square().sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return D.detach()


def construction_changes(state: Readout, D: Tensor, rank: int) -> Tensor:
    """Residual changes ``DW K`` of the best rank-``rank`` update for ``D*`` (RANK-1's
    Eckart-Young construction ``LR_r(D) pinv(K)``), as ``(N, d_model)``."""
    facts = FactSystem(K=state.keys.T.double().cpu(), D=D.T.double().cpu())  # K (d_mlp, N), D (d_model, N)
    return (optimal_update(facts, rank).delta @ facts.K).T  # (N, d_model)


def measure_capacity(base: GPT, pre: Pretraining, cfg: CapacityConfig, rank: int,
                     rng: np.random.Generator, gen: torch.Generator, device: str = "cpu") -> dict:
    """Train one rank-``rank`` LoRA on the last ``mlp_out`` to store ``cfg.n_facts`` edits and
    compare what it stores with RANK-1 (module docstring). JSON-able dict of counts and norms."""
    examples, facts = edit_facts(pre, cfg.n_facts, rng)
    if cfg.n_facts > base.cfg.d_mlp:
        raise ValueError(f"capacity.n_facts={cfg.n_facts}: must be <= model.d_mlp={base.cfg.d_mlp} "
                         "(independent keys)")
    state = readout(base, examples)
    D = required_changes(base, state, cfg.margin, cfg.solve_steps)
    lora = lora_config(base.cfg.n_layers, rank)
    model = inject_lora(base, lora, role_modules(base), gen)
    result = train(model, examples, cfg.finetune, gen, {"facts": examples}, device)
    (factors,) = extract_adapter(model, lora).factors.values()
    trained = state.keys @ factors.delta.T  # (N, d_model): the LoRA's DW k at each fact
    Dd = D.T.double().cpu()  # (d_model, N)
    construction = construction_changes(state, D, min(rank, min(Dd.shape)))
    sigma = torch.linalg.svdvals(Dd)
    logit_changes = torch.zeros(base.cfg.d_vocab, cfg.n_facts, dtype=torch.float64)  # (d_vocab, N)
    logit_changes[facts[:, 3], torch.arange(cfg.n_facts)] += 1.0
    logit_changes[facts[:, 2], torch.arange(cfg.n_facts)] -= 1.0
    count = lambda change: int(recalled(base, state, change).sum())  # noqa: E731
    return {
        "rank": rank, "n_facts": cfg.n_facts, "bound": bound(rank, cfg.n_facts),
        "recalled_trained": count(trained), "exact_match_trained": exact_match(model, examples),
        "recalled_construction": count(construction.to(D)), "recalled_required": count(D),
        "recalled_base": count(torch.zeros_like(D)),
        "margin_required_min": float(margins(base, state, D).min()),
        "rank_required": numerical_rank(Dd, rtol=1e-3), "rank_logit_changes": numerical_rank(logit_changes),
        "sigma_required": sigma.tolist(), "norm_required": float(sigma.square().sum().sqrt()),
        "ey_tail": eckart_young_error(Dd, rank),
        "error_trained": float(torch.linalg.matrix_norm(trained.T.double().cpu() - Dd)),
        "error_construction": float(torch.linalg.matrix_norm(construction.T - Dd)),
        "finetune_steps": result.steps, "finetune_seconds": round(result.seconds, 3),
    }
