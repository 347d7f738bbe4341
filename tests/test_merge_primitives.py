"""theory.merge primitives against numpy references and hand-computed cases: TIES trimming,
the TIES disjoint mean, numerical rank, the rank-0 Eckart-Young tail, zero weights, and the
validation messages. Written to kill the mutants `make mutation` found alive."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from theory import merge as M
from conftest import seeded


def _factors(r: int, d_out: int = 4, d_in: int = 5, seed: int = 0, scale: float = 1.0) -> M.Factors:
    g = seeded(seed)
    return M.Factors(A=torch.randn(r, d_in, generator=g), B=torch.randn(d_out, r, generator=g), scale=scale)


def _numpy_top_k(delta: np.ndarray, k: int) -> np.ndarray:
    """Reference: keep the k entries of largest magnitude, zero the rest."""
    out = np.zeros_like(delta)
    keep = np.argsort(-np.abs(delta), axis=None)[:k]
    out.flat[keep] = delta.flat[keep]
    return out


@pytest.mark.parametrize("density,k", [(1e-9, 1), (0.02, 1), (0.1, 3), (0.5, 15), (0.9, 27), (1.0, 30)])
def test_trim_top_k_keeps_the_k_largest_magnitudes(density, k):
    """k = max(1, round(density * numel)) entries survive (30 entries, distinct magnitudes)."""
    delta = torch.randn(5, 6, generator=seeded(3), dtype=torch.float64)
    trimmed = M.trim_top_k(delta, density)
    np.testing.assert_array_equal(trimmed.numpy(), _numpy_top_k(delta.numpy(), k))
    assert int((trimmed != 0).sum()) == k


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_trim_top_k_rejects_densities_outside_0_1(density):
    with pytest.raises(ValueError, match=rf"^density={density}: must be in \(0, 1\]$"):
        M.trim_top_k(torch.ones(2, 2), density)


def test_ties_disjoint_mean_by_hand():
    """Entry 0: both +, mean (1 + 3) / 2; entry 1: elected - (sum -1), only -2 agrees;
    entry 2: elected + (sum 2), only 3 agrees. With weights (2, 1) the trimmed values are
    (2, -4, 6) and (3, 1, -1)."""
    d1, d2 = torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([[3.0, 1.0, -1.0]])
    torch.testing.assert_close(M.ties([d1, d2], density=1.0), torch.tensor([[2.0, -2.0, 3.0]]))
    torch.testing.assert_close(M.ties([d1, d2], weights=[2.0, 1.0], density=1.0), torch.tensor([[2.5, -4.0, 6.0]]))


def test_ties_default_density_keeps_a_fifth_of_the_entries():
    delta = torch.randn(10, 10, generator=seeded(4))
    merged = M.ties([delta])
    assert int((merged != 0).sum()) == 20
    torch.testing.assert_close(merged, M.trim_top_k(delta, 0.2))


@pytest.mark.parametrize("matrix,rtol,rank", [
    pytest.param(torch.zeros(0, 3), 1e-6, 0, id="empty"),
    pytest.param(torch.zeros(3, 3), 1e-6, 0, id="zero"),
    pytest.param(torch.tensor([[2.0]]), 1e-6, 1, id="1x1"),
    pytest.param(torch.eye(3), 1e-6, 3, id="identity (sigma_max = 1)"),
    pytest.param(torch.diag(torch.tensor([3.0, 0.0, 0.0])), 0.0, 1, id="rtol=0 counts nonzero sigmas"),
    pytest.param(torch.diag(torch.tensor([10.0, 0.05])), 0.01, 1, id="0.05 < 0.01 * 10"),
    pytest.param(torch.diag(torch.tensor([10.0, 0.5])), 0.01, 2, id="0.5 > 0.01 * 10"),
])
def test_numerical_rank_counts_singular_values_above_rtol_sigma_max(matrix, rtol, rank):
    assert M.numerical_rank(matrix, rtol=rtol) == rank


def test_eckart_young_error_at_rank_0_is_the_frobenius_norm():
    delta = _factors(3).delta
    assert M.eckart_young_error(delta, 0) == pytest.approx(float(np.linalg.norm(delta.numpy())), rel=1e-6)


def test_factor_average_with_a_zero_weight_is_the_other_adapter():
    a, b = _factors(2, seed=1, scale=0.5), _factors(2, seed=2, scale=3.0)
    torch.testing.assert_close(M.factor_average([a, b], [1.0, 0.0]).delta, a.delta)


def test_factor_average_gap_is_the_cross_terms_with_a_switched_off_adapter():
    """MERGE-3 with an adapter of scale 0 (delta = 0): the identity
    factor_average.delta = weighted_delta_sum + cross_terms still holds, with no division by
    the scale."""
    adapters = [_factors(2, seed=1, scale=0.5), _factors(2, seed=2, scale=0.0)]
    torch.testing.assert_close(M.factor_average(adapters).delta,
                               M.weighted_delta_sum(adapters) + M.cross_terms(adapters))


def test_factor_shapes_are_validated():
    message = r"^factor shapes A={}, B={}: need A \(r, d_in\) and B \(d_out, r\) with the same r$"
    with pytest.raises(ValueError, match=message.format(r"\(2, 5\)", r"\(4, 3\)")):
        M.Factors(A=torch.zeros(2, 5), B=torch.zeros(4, 3))  # r differs
    with pytest.raises(ValueError, match=message.format(r"\(3,\)", r"\(4, 3\)")):
        M.Factors(A=torch.zeros(3), B=torch.zeros(4, 3))  # A is not a matrix


def test_merge_messages_name_the_problem_and_the_fix():
    with pytest.raises(ValueError, match=r"^adapters is empty: give at least one adapter to merge$"):
        M.cat([])
    with pytest.raises(ValueError, match=r"^rank=0: must be in \[1, 4\] for a \(4, 5\) delta$"):
        M.svd_truncate(torch.ones(4, 5), 0)
    # the ranks found and the fix must be in the message; its opening words may change
    with pytest.raises(ValueError, match=r"needs equal ranks, got \[2, 3\]: use cat or svd$"):
        M.factor_average([_factors(2), _factors(3)])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_dare_keeps_the_right_share_in_low_precision(dtype):
    """MERGE-4's unbiasedness needs P(keep) = 1 - drop_rate exactly; uniforms drawn in
    bfloat16 are coarse enough to keep 0.1016 at drop_rate 0.9 (5 standard errors here)."""
    n, drop = 1_000_000, 0.9
    kept = M.dare(torch.ones(n, 1, dtype=dtype), drop, torch.Generator().manual_seed(0)) != 0
    share, se = kept.float().mean().item(), (drop * (1 - drop) / n) ** 0.5
    assert abs(share - (1 - drop)) < 3 * se
