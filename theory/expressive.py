"""RANK-2: Zeng & Lee, "The Expressive Power of Low-Rank Adaptation" (ICLR 2024): their LoRA
adapters for linear nets and ReLU FNNs built numerically, Adam-trained LoRA beside them, and
the error bound below the threshold (the claim's checks: theory/rank2.py; transformers:
theory/expressive_tfn.py).

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
Below the threshold each group's product gap ``G_i`` has ``||G_i||_2 = s_i = sigma_{RM+1}(E_i)``
and the function error is > 0, bounded by :func:`relu_error_bound`: group i computes
``phi((W~_i + G_i) z_{i-1} + b~_i)`` (phi = ReLU or, last, identity; 1-Lipschitz), so the error
``e_i`` after group i obeys ``e_i <= (||W~_i||_2 + s_i) e_{i-1} + s_i ||z~_{i-1}||`` and

    RMS_x ||f(x) - f~(x)|| <= sum_i s_i RMS_x ||z~_{i-1}(x)|| prod_{j>i} (||W~_j||_2 + s_j)

(Minkowski over x), with ``z~_{i-1}`` the TARGET's input to its layer i. Zeng & Lee's
below-threshold theorem is an upper bound of this form (a sum over the groups of
``sigma_{RM+1}(E_i)`` times the growth through the later target layers times the size of
the group's input), with worst-case constants in place of the measured activation sizes;
their exact constants are not reproduced here (the paper's text was not available to us),
so this is the same argument with tighter, measured constants. The biases come from a
worst-case norm bound on the ball, so they grow quickly with M and float64 round-off in the
construction's output is about ``eps * max|b_l|`` (exact in exact arithmetic).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from theory.merge import eckart_young_error, svd_truncate
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


def relu_error_bound(frozen: FNN, target: FNN, rank: int, x: Tensor) -> float:
    """Upper bound on the RMS error over inputs ``x (n, D)`` (in the construction's ball) of
    :func:`relu_construction` at ``rank`` (module docstring); 0 once every ``s_i = 0``."""
    L, L_t = len(frozen.weights), len(target.weights)
    M = L // L_t
    s = [linear_prediction(frozen.weights[i * M:(i + 1) * M], target.weights[i], rank)[0] for i in range(L_t)]
    growth = [float(torch.linalg.matrix_norm(W, ord=2)) + si for W, si in zip(target.weights, s)]
    bound, z = 0.0, x
    for i, (W, b) in enumerate(zip(target.weights, target.biases)):
        bound += s[i] * float(z.square().sum(dim=1).mean().sqrt()) * math.prod(growth[i + 1:])
        z = z @ W.T + b  # the target's layer i
        z = torch.relu(z) if i < L_t - 1 else z
    return bound
