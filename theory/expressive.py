"""RANK-2: Zeng & Lee, "The Expressive Power of Low-Rank Adaptation" (ICLR 2024), checked
by building their LoRA adapters numerically and comparing with Adam-trained LoRA.

Linear networks (their Lemma on linear models). Frozen ``f(x) = W_L ... W_1 x``, target
``f~(x) = W~ x`` (here ``W~`` is a product of L~ random layers), error matrix
``E = W~ - W_L ... W_1``. With LoRA of rank <= R on every layer,

    min ||prod_l (W_l + dW_l) - W~||_2 = sigma_{RL+1}(E)     (0 once RL >= rank(E)),

so the adapted net is exact iff ``R >= ceil(rank(E) / L)``. Lower bound: the product minus
``W_L...W_1`` telescopes into L terms of rank <= R, so it has rank <= RL (Eckart-Young; the
same argument gives the Frobenius tail ``sqrt(sum_{i>RL} sigma_i(E)^2)``). Achievability,
their construction: split the top-RL SVD of E into L chunks ``E_l`` of R singular triplets
and set ``dW_l = S_l^{-1} E_l M_{l-1}^{-1}`` with suffix ``S_l = W_L...W_{l+1}`` and adapted
prefix ``M_{l-1} = (W_{l-1}+dW_{l-1})...(W_1+dW_1)``; then ``S_l M_l = W_L...W_1 + E_1 + ... + E_l``.
ASSUMPTION (theirs): every ``W_l`` and every ``W_L...W_1 + LR_r(E)``, ``r <= R(L-1)``, is
non-singular (true almost surely for Gaussian weights; :func:`linear_construction` reports
the smallest singular value it inverted).

ReLU FNNs (their uniform-partition theorem). Layers ``z_l = ReLU(W_l z_{l-1} + b_l)`` for
``l < L``, last layer linear (their code also applies ReLU at the output; the construction is
unchanged because each group's last layer copies the target layer's activation). Split the
L frozen layers into L~ groups of ``M = L / L~``; group i reproduces target layer i: its
weights get the linear construction for ``W~_i``, every non-final layer of the group gets a
bias large enough that its ReLU is the identity on the bounded input set ``||x||_2 <= rho``,
and the group's last bias cancels those biases and adds ``b~_i``. Exact for
``R >= ceil(D L~ / L)`` (rank(E_i) <= D) on the whole ball, biases tuned as in the paper.
Below the threshold each group's product gap is ``sigma_{RM+1}(E_i)`` and the function
error is > 0; the paper bounds it from above (not reproduced here). The biases come from a
worst-case norm bound on the ball, so they grow quickly with M and float64 round-off in the
construction's output is about ``eps * max|b_l|`` (exact in exact arithmetic).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from theory.claims import Check, ClaimSettings, claim
from theory.merge import eckart_young_error, numerical_rank, svd_truncate
from theory.rank import DTYPE, fit_adam


def random_layers(n_layers: int, width: int, generator: torch.Generator) -> list[Tensor]:
    """``n_layers`` Gaussian ``(width, width)`` matrices with entries N(0, 1/width)."""
    if not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers={n_layers!r}: must be an integer >= 1")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width={width!r}: must be an integer >= 1")
    return [torch.randn(width, width, generator=generator, dtype=DTYPE) / math.sqrt(width) for _ in range(n_layers)]


def product(weights: Sequence[Tensor]) -> Tensor:
    """``W_L ... W_1`` for ``weights = [W_1, ..., W_L]`` (W_1 acts first)."""
    out = torch.eye(weights[0].shape[1], dtype=weights[0].dtype)
    for W in weights:
        out = W @ out
    return out


@dataclass(frozen=True)
class LinearConstruction:
    deltas: list[Tensor]  # dW_l, each (D, D) of rank <= R
    min_sigma: float  # smallest singular value among the matrices inverted (the assumption)


def linear_construction(frozen: Sequence[Tensor], target: Tensor, rank: int) -> LinearConstruction:
    """Zeng & Lee's rank-``rank`` adapters (module docstring):
    ``prod(W_l + dW_l) = W_L...W_1 + LR_{rank L}(E)``."""
    width = target.shape[0]
    if not isinstance(rank, int) or not 1 <= rank <= width:
        raise ValueError(f"rank={rank!r}: must be an integer in [1, {width}] (the width)")
    E = target - product(frozen)
    U, S, Vh = torch.linalg.svd(E)
    prefix = torch.eye(width, dtype=target.dtype)  # M_{l-1}
    deltas, min_sigma = [], math.inf
    for l in range(len(frozen)):
        k = slice(min(l * rank, width), min((l + 1) * rank, width))  # this layer's singular triplets
        E_l = U[:, k] @ torch.diag(S[k]) @ Vh[k]  # (D, D), rank <= R
        suffix = product(frozen[l + 1:]) if l + 1 < len(frozen) else torch.eye(width, dtype=target.dtype)
        min_sigma = min(min_sigma, float(torch.linalg.svdvals(suffix)[-1]), float(torch.linalg.svdvals(prefix)[-1]))
        dW = torch.linalg.solve(suffix, E_l) @ torch.linalg.inv(prefix)  # S_l^{-1} E_l M_{l-1}^{-1}
        deltas.append(dW)
        prefix = (frozen[l] + dW) @ prefix
    return LinearConstruction(deltas=deltas, min_sigma=min_sigma)


def linear_prediction(frozen: Sequence[Tensor], target: Tensor, rank: int) -> tuple[float, float]:
    """Zeng & Lee's optimum for rank ``rank``: ``(sigma_{RL+1}(E), Frobenius tail)``."""
    E = target - product(frozen)
    S = torch.linalg.svdvals(E)
    k = rank * len(frozen)
    return (float(S[k]) if k < len(S) else 0.0), eckart_young_error(E, min(k, len(S)))


def lora_rank(delta: Tensor, rank: int) -> Tensor:
    """``delta`` written as rank-``rank`` LoRA factors and multiplied back (``B @ A``):
    lossless when ``rank(delta) <= rank``, which pins the adapters' rank."""
    return svd_truncate(delta, rank).delta


# --- ReLU FNN --------------------------------------------------------------------------


@dataclass(frozen=True)
class FNN:
    """``z_l = ReLU(W_l z_{l-1} + b_l)`` for ``l < L``; the last layer is linear.
    ``relu=False`` gives the linear network ``W_L ... W_1 x`` (+ biases)."""

    weights: list[Tensor]  # W_l: (D, D)
    biases: list[Tensor]  # b_l: (D,)
    relu: bool = True

    def __call__(self, x: Tensor) -> Tensor:  # x: (n, D) -> (n, D); batched nets: (k, n, D)
        for l, (W, b) in enumerate(zip(self.weights, self.biases)):
            x = x @ W.mT + b.unsqueeze(-2)  # W: (D, D) or (k, D, D), b: (D,) or (k, D)
            if self.relu and l < len(self.weights) - 1:
                x = torch.relu(x)
        return x


def random_fnn(n_layers: int, width: int, generator: torch.Generator, bias_std: float = 0.5, relu: bool = True) -> FNN:
    """Gaussian weights (:func:`random_layers`), N(0, bias_std^2) biases (zero if linear)."""
    weights = random_layers(n_layers, width, generator)
    biases = [bias_std * relu * torch.randn(width, generator=generator, dtype=DTYPE) for _ in range(n_layers)]
    return FNN(weights=weights, biases=biases, relu=relu)


def relu_construction(frozen: FNN, target: FNN, rank: int, radius: float = 1.0) -> FNN:
    """Zeng & Lee's uniform-partition construction (module docstring): the adapted FNN
    (weights ``W_l + dW_l`` with ``rank(dW_l) <= rank``, tuned biases) that equals ``target``
    on ``||x||_2 <= radius`` once ``rank >= ceil(D L~ / L)``."""
    L, L_t = len(frozen.weights), len(target.weights)
    if L % L_t:
        raise ValueError(f"frozen depth L={L}: must be a multiple of the target depth L~={L_t} (uniform partition)")
    if not radius > 0:
        raise ValueError(f"radius={radius}: must be > 0")
    M = L // L_t
    weights, biases, bound = [], [], radius  # bound: sup ||z||_2 of the current activation
    for i in range(L_t):
        group = frozen.weights[i * M:(i + 1) * M]
        built = linear_construction(group, target.weights[i], rank)
        adapted = [W + lora_rank(dW, rank) for W, dW in zip(group, built.deltas)]
        offset = torch.zeros_like(target.biases[i])  # what the group's inner biases add at its end
        for j, W in enumerate(adapted):
            if j < M - 1:
                b = bound * torch.linalg.vector_norm(W, dim=1)  # |(W z)_k| <= ||W_k,:|| ||z||: ReLU is the identity
                offset = W @ offset + b  # (D,): inner biases carried to this layer's output
            else:
                b = target.biases[i] - W @ offset
            weights.append(W)
            biases.append(b)
            bound = float(torch.linalg.matrix_norm(W, ord=2)) * bound + float(torch.linalg.vector_norm(b))
    return FNN(weights=weights, biases=biases)


def sample_ball(n: int, width: int, radius: float, generator: torch.Generator) -> Tensor:
    """``n`` points uniform in ``{||x||_2 <= radius}``: ``(n, width)``."""
    x = torch.randn(n, width, generator=generator, dtype=DTYPE)
    r = radius * torch.rand(n, 1, generator=generator, dtype=DTYPE) ** (1.0 / width)
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True) * r


def rms_error(f: FNN, g: FNN, x: Tensor) -> float:
    """``sqrt(mean_x ||f(x) - g(x)||^2)``."""
    return float((f(x) - g(x)).square().sum(dim=1).mean().sqrt())


def trained_lora(frozen: FNN, target: FNN, ranks: Sequence[int], generator: torch.Generator, steps: int = 300,
                 lr: float = 0.03, batch: int = 128, radius: float = 1.0) -> list[FNN]:
    """One LoRA per rank in ``ranks`` on every layer (``B = 0``, ``A`` random), plus the
    biases of a ReLU net (as in Zeng & Lee's experiments), trained by Adam on the MSE to
    ``target`` over the same fresh batches from the ball. The nets are trained side by side
    as one batch of independent models (Adam is elementwise, so this equals separate runs);
    rank R keeps the first R of ``max(ranks)`` components (the rest are masked to zero)."""
    width, L, n, r_max = frozen.weights[0].shape[0], len(frozen.weights), len(ranks), max(ranks)
    if min(ranks) < 1 or r_max > width:
        raise ValueError(f"ranks={list(ranks)}: each must be in [1, {width}] (the width)")
    W = torch.stack(frozen.weights).unsqueeze(0)  # (1, L, D, D)
    mask = (torch.arange(r_max) < torch.tensor(ranks)[:, None]).to(DTYPE)[:, None, :, None]  # (n, 1, r_max, 1)
    A = (torch.randn(n, L, r_max, width, generator=generator, dtype=DTYPE) / math.sqrt(width)).requires_grad_()
    B = torch.zeros(n, L, width, r_max, dtype=DTYPE, requires_grad=True)
    b = torch.stack(frozen.biases).repeat(n, 1, 1).requires_grad_(frozen.relu)  # (n, L, D)
    xs = sample_ball(steps * batch + batch, width, radius, generator).split(batch)  # (batch, D) each
    step = iter(range(len(xs)))

    def adapted() -> FNN:
        Ws = W + B @ (A * mask)  # (n, L, D, D)
        return FNN(weights=list(Ws.unbind(1)), biases=list(b.unbind(1)), relu=frozen.relu)  # per layer (n, D, D)

    def loss() -> Tensor:
        x = xs[next(step, len(xs) - 1)]
        return (adapted()(x) - target(x)).square().sum(dim=-1).mean(dim=-1).sum()  # (n, batch, D) -> sum of n MSEs

    fit_adam([A, B] + ([b] if frozen.relu else []), loss, steps, lr)
    with torch.no_grad():
        net = adapted()
    return [FNN(weights=[w[k].detach() for w in net.weights], biases=[bi[k].detach() for bi in net.biases],
                relu=frozen.relu) for k in range(n)]


# --- the claim -------------------------------------------------------------------------

WIDTH, DEPTH, TARGET_DEPTH = 8, 4, 2  # D, L, L~ of the ReLU nets: threshold ceil(8*2/4) = 4
LINEAR_DEPTH = 2  # frozen linear net: threshold ceil(rank(E)/2) = 4 for a full-rank E
N_TEST, TOL = 2000, 1e-9


@claim("RANK-2")
def rank2(settings: ClaimSettings) -> list[Check]:
    """RANK-2 (Zeng & Lee, "The Expressive Power of Low-Rank Adaptation", ICLR 2024): LoRA
    of rank R on a frozen depth-L, width-D net represents any depth-L~ target exactly when
    ``R >= ceil(D L~ / L)`` (linear nets: ``R >= ceil(rank(E) / L)``) under their
    non-singularity assumption; below, the linear optimum is ``sigma_{RL+1}(E)``."""
    gen = torch.Generator().manual_seed(settings.seed)
    D, L, Lt = WIDTH, DEPTH, TARGET_DEPTH
    ranks = list(range(1, D + 1))
    # (a) linear nets: frozen W_L...W_1 vs a target product of L~ layers
    frozen_lin, target_lin = random_fnn(LINEAR_DEPTH, D, gen, relu=False), random_fnn(Lt, D, gen, relu=False)
    W_t = product(target_lin.weights)
    E = W_t - product(frozen_lin.weights)
    lin_threshold = math.ceil(numerical_rank(E) / LINEAR_DEPTH)
    lin = {"spectral": [], "frobenius": [], "pred_spectral": [], "pred_frobenius": [], "sgd_frobenius": [],
           "adapter_rank": [], "min_sigma": []}
    sgd_lin = trained_lora(frozen_lin, target_lin, ranks, gen)
    for R, sgd in zip(ranks, sgd_lin):
        built = linear_construction(frozen_lin.weights, W_t, R)
        gap = product([W + dW for W, dW in zip(frozen_lin.weights, built.deltas)]) - W_t
        pred = linear_prediction(frozen_lin.weights, W_t, R)
        lin["spectral"].append(float(torch.linalg.matrix_norm(gap, ord=2)))
        lin["frobenius"].append(float(torch.linalg.matrix_norm(gap)))
        lin["pred_spectral"].append(pred[0])
        lin["pred_frobenius"].append(pred[1])
        lin["sgd_frobenius"].append(float(torch.linalg.matrix_norm(product(sgd.weights) - W_t)))
        lin["adapter_rank"].append(max(numerical_rank(dW, rtol=1e-9) for dW in built.deltas))
        lin["min_sigma"].append(built.min_sigma)
    # (b) ReLU FNNs on the unit ball, L/L~ frozen layers per target layer
    frozen, target = random_fnn(L, D, gen), random_fnn(Lt, D, gen)
    x = sample_ball(N_TEST, D, 1.0, gen)  # (N_TEST, D)
    scale = float(target(x).square().sum(dim=1).mean().sqrt())
    relu_threshold, M = math.ceil(D * Lt / L), L // Lt
    relu = {"construction": [], "sgd": [], "group_gap": [], "pred_group_gap": []}
    sgd_relu = trained_lora(frozen, target, ranks, gen)
    for R, sgd in zip(ranks, sgd_relu):
        adapted = relu_construction(frozen, target, R)
        relu["construction"].append(rms_error(adapted, target, x) / scale)
        relu["sgd"].append(rms_error(sgd, target, x) / scale)
        gaps = [product(adapted.weights[i * M:(i + 1) * M]) - target.weights[i] for i in range(Lt)]
        relu["group_gap"].append(max(float(torch.linalg.matrix_norm(g, ord=2)) for g in gaps))
        relu["pred_group_gap"].append(max(linear_prediction(frozen.weights[i * M:(i + 1) * M], target.weights[i], R)[0]
                                          for i in range(Lt)))
    data = {"ranks": ranks, "width": D, "depth": L, "linear_depth": LINEAR_DEPTH, "target_depth": Lt,
            "linear_threshold": lin_threshold,
            "relu_threshold": relu_threshold, "linear": lin, "relu": relu}
    above_lin = [i for i, R in enumerate(ranks) if R >= lin_threshold]
    below_lin = [i for i, R in enumerate(ranks) if R < lin_threshold]
    above_relu = [i for i, R in enumerate(ranks) if R >= relu_threshold]
    below_relu = [i for i, R in enumerate(ranks) if R < relu_threshold]
    lin_exact = max(lin["spectral"][i] for i in above_lin)
    lin_tail = max(max(abs(lin["spectral"][i] - lin["pred_spectral"][i]),
                       abs(lin["frobenius"][i] - lin["pred_frobenius"][i])) for i in below_lin)
    lin_pos = min(lin["pred_spectral"][i] for i in below_lin)
    relu_exact = max(relu["construction"][i] for i in above_relu)
    relu_pos = min(relu["construction"][i] for i in below_relu)
    group_gap = max(abs(a - b) for a, b in zip(relu["group_gap"], relu["pred_group_gap"]))
    sgd_margin = min(s - p for s, p in zip(lin["sgd_frobenius"], lin["pred_frobenius"]))
    rank_ok = all(r <= R for r, R in zip(lin["adapter_rank"], ranks))
    return [
        Check("RANK-2.linear",
              f"linear D={D}, L={LINEAR_DEPTH}: product exact for R >= ceil(rank(E)/L) = {lin_threshold}",
              0.0, lin_exact, TOL, lin_exact <= TOL, data),
        Check("RANK-2.linear_tail", "linear, R below threshold: ||gap||_2 = sigma_{RL+1}(E), ||gap||_F = EY tail",
              0.0, lin_tail, TOL, lin_tail <= TOL and lin_pos > 1e-3),
        Check("RANK-2.adapter_rank", f"max rank of the constructed dW_l for R = 1..{D} is <= R",
              str(ranks), str(lin["adapter_rank"]), "<=", rank_ok),
        Check("RANK-2.assumption", "non-singularity: smallest singular value among the inverted matrices",
              "> 0", min(lin["min_sigma"]), 1e-6, min(lin["min_sigma"]) > 1e-6),
        Check("RANK-2.relu", f"ReLU FNN L={L} -> L~={Lt}: exact on ||x||<=1 for R >= ceil(D L~/L) = {relu_threshold}"
              " (relative RMS)", 0.0, relu_exact, TOL, relu_exact <= TOL),
        Check("RANK-2.relu_below", "ReLU, R below threshold: group gaps = sigma_{RM+1}(E_i), output error > 0",
              "gap err 0, min err > 0", f"gap err {group_gap:.2g}, min err {relu_pos:.3g}", TOL,
              group_gap <= TOL and relu_pos > 1e-3),
        Check("RANK-2.sgd", "Adam-trained LoRA (linear) never beats the optimum (Frobenius, min margin)",
              ">= 0", sgd_margin, TOL, sgd_margin >= -TOL),
    ]
