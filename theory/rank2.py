"""RANK-2 (Zeng & Lee, "The Expressive Power of Low-Rank Adaptation", ICLR 2024), the claim:
linear nets and ReLU FNNs (constructions in theory/expressive.py, with the below-threshold
error bound :func:`~theory.expressive.relu_error_bound`) and transformers (theory/expressive_tfn.py).

What is checked, and what is not:
- linear nets: exact at ``R >= ceil(rank(E)/L)``, below it the optimum ``sigma_{RL+1}(E)``
  (spectral) / Eckart-Young tail (Frobenius) is attained, Adam-trained LoRA never beats it;
- ReLU FNNs (uniform partition): exact on the unit ball at ``R >= ceil(D L~/L)``; below it
  each group's product gap is ``sigma_{RM+1}(E_i)``, the output error is > 0 and at most the
  bound (ours, of the form of Zeng & Lee's; expressive.py says how it relates to theirs);
- transformers (their architecture: no residual, no LayerNorm): exact for a random same-size
  target at ``R = ceil(D/2)`` with adapters on every head's W_Q, W_K, W_V, W_O, the last W_2
  and the output (+ FFN biases); below it every adapted product misses by exactly the
  two-layer optimum and the output error is > 0. NOT checked: an error bound for transformers
  below the threshold (Zeng & Lee state none), their general (non-uniform) partitions,
  multi-block targets of a different depth, and Adam-trained LoRA on transformers.
"""
from __future__ import annotations

import math

import torch

from theory.claims import Check, ClaimSettings, claim
from theory.expressive import (linear_construction, linear_prediction, product, random_fnn, relu_construction,
                               relu_error_bound, rms_error, sample_ball, trained_lora)
from theory.expressive_tfn import random_tfn, tfn_construction
from theory.merge import eckart_young_error, numerical_rank

WIDTH, DEPTH, TARGET_DEPTH = 8, 4, 2  # D, L, L~ of the ReLU nets: threshold ceil(8*2/4) = 4
LINEAR_DEPTH = 2  # frozen linear net: threshold ceil(rank(E)/2) = 4 for a full-rank E
N_TEST, TOL = 2000, 1e-9
TFN_WIDTH, TFN_HEADS, TFN_BLOCKS, TFN_TOKENS, TFN_TEST = 8, 2, 2, 5, 200  # threshold ceil(8/2) = 4


@claim("RANK-2")
def rank2(settings: ClaimSettings) -> list[Check]:
    """RANK-2 (Zeng & Lee, "The Expressive Power of Low-Rank Adaptation", ICLR 2024): LoRA
    of rank R on a frozen depth-L, width-D net represents any depth-L~ target exactly when
    ``R >= ceil(D L~ / L)`` (linear nets: ``R >= ceil(rank(E) / L)``) under their
    non-singularity assumption; below, the linear optimum is ``sigma_{RL+1}(E)`` and the
    ReLU error is bounded (quantified error below the threshold). Transformers: rank
    ``ceil(D/2)`` adapters match any same-size target transformer."""
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
    relu = {"construction": [], "sgd": [], "group_gap": [], "pred_group_gap": [], "bound": []}
    sgd_relu = trained_lora(frozen, target, ranks, gen)
    for R, sgd in zip(ranks, sgd_relu):
        adapted = relu_construction(frozen, target, R)
        relu["construction"].append(rms_error(adapted, target, x) / scale)
        relu["sgd"].append(rms_error(sgd, target, x) / scale)
        gaps = [product(adapted.weights[i * M:(i + 1) * M]) - target.weights[i] for i in range(Lt)]
        relu["group_gap"].append(max(float(torch.linalg.matrix_norm(g, ord=2)) for g in gaps))
        relu["pred_group_gap"].append(max(linear_prediction(frozen.weights[i * M:(i + 1) * M], target.weights[i], R)[0]
                                          for i in range(Lt)))
        relu["bound"].append(relu_error_bound(frozen, target, R, x) / scale)
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
    slack = min(b - c for b, c in zip(relu["bound"], relu["construction"]))
    ratio = [relu["construction"][i] / relu["bound"][i] for i in below_relu]
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
        Check("RANK-2.relu_bound", f"ReLU, every R: error <= bound sum_i s_i |z~_i-1| prod_j>i (|W~_j| + s_j) "
              f"(measured/bound below threshold {min(ratio):.2f}..{max(ratio):.2f}); min slack", ">= 0", slack, TOL,
              slack >= -TOL and all(relu["bound"][i] > 0 for i in below_relu)
              and all(relu["bound"][i] == 0 for i in above_relu)),
        Check("RANK-2.sgd", "Adam-trained LoRA (linear) never beats the optimum (Frobenius, min margin)",
              ">= 0", sgd_margin, TOL, sgd_margin >= -TOL),
    ] + tfn_checks(gen)


def tfn_checks(gen: torch.Generator) -> list[Check]:
    """RANK-2 for transformers (theory/expressive_tfn.py) at R = 1..ceil(D/2). Larger R add
    nothing to the statement (rank-R adapters include the rank-ceil(D/2) ones); the
    construction with R above the threshold spends more triplets on the first factor and
    can invert a near-singular matrix (measured: down to 1e-7), which is not the theorem's concern."""
    D, H, L = TFN_WIDTH, TFN_HEADS, TFN_BLOCKS
    frozen, target = random_tfn(L, H, D, gen), random_tfn(L, H, D, gen)
    X = torch.randn(TFN_TEST, TFN_TOKENS, D, generator=gen, dtype=torch.float64)  # (n, N, D)
    Y = target(X)
    scale = float(Y.square().sum(-1).mean().sqrt())
    threshold = math.ceil(D / 2)
    ranks = list(range(1, threshold + 1))
    err, gap, rank_max, min_sigma = [], [], [], []
    for R in ranks:
        built = tfn_construction(frozen, target, R)
        err.append(float((built.adapted(X) - Y).square().sum(-1).mean().sqrt()) / scale)
        gap.append(max(max(abs(float(torch.linalg.matrix_norm(P - T, ord=2)) - _sigma(E, 2 * R)),
                           abs(float(torch.linalg.matrix_norm(P - T)) - eckart_young_error(E, min(2 * R, D))))
                       for E, P, T in built.products))
        rank_max.append(max(numerical_rank(dW, rtol=1e-9) for dW in built.adapters))
        min_sigma.append(built.min_sigma)
    frozen_err = float((frozen(X) - Y).square().sum(-1).mean().sqrt()) / scale
    above, below = [i for i, R in enumerate(ranks) if R >= threshold], [i for i, R in enumerate(ranks) if R < threshold]
    exact, below_min = max(err[i] for i in above), min(err[i] for i in below)
    data = {"ranks": ranks, "threshold": threshold, "error": err, "frozen_error": frozen_err}
    return [
        Check("RANK-2.tfn", f"transformer D={D}, H={H}, {L} blocks (Zeng & Lee's: no residual/LayerNorm): rank-R "
              f"LoRA on W_Q,W_K,W_V,W_O, last W_2, W_o exact at R = ceil(D/2) = {threshold} (rel. RMS)",
              0.0, exact, TOL, exact <= TOL, data),
        Check("RANK-2.tfn_below", f"transformer, R < {threshold}: every product W_Q^T W_K, W_O W_V, W_o W_2 misses by "
              f"sigma_2R+1 / EY tail; output error > 0 (min {below_min:.3g}; frozen {frozen_err:.3g}; R=1 "
              f"{err[0]:.3g}: no bound below)", 0.0, max(gap[i] for i in below), TOL,
              max(gap[i] for i in below) <= TOL and below_min > 1e-3),
        Check("RANK-2.tfn_products", "transformer, R = ceil(D/2): every adapted product equals its target",
              0.0, max(gap[i] for i in above), TOL, max(gap[i] for i in above) <= TOL),
        Check("RANK-2.tfn_adapter_rank", f"every transformer adapter for R = 1..{threshold} has rank <= R",
              str(ranks), str(rank_max), "<=", all(r <= R for r, R in zip(rank_max, ranks))),
        Check("RANK-2.tfn_assumption", "non-singularity: smallest singular value inverted (W_1, W_2, W~_2, W_o + dW_o, "
              "construction)", "> 0", min(min_sigma), 1e-6, min(min_sigma) > 1e-6),
    ]


def _sigma(E: torch.Tensor, k: int) -> float:
    """``sigma_{k+1}(E)`` (0-based index k), 0 past the last singular value."""
    S = torch.linalg.svdvals(E)
    return float(S[k]) if k < len(S) else 0.0
