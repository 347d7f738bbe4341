"""MERGE-1..6 (PAPER.md section 1): "cat is exactly the weighted sum of deltas with rank
sum r_i; svd truncation of it is optimal (Eckart-Young); merging factors separately adds
cross terms B_i A_j; DARE is unbiased in expectation; TIES sign election keeps the majority
sign; rank(sum) <= sum of ranks." Every test uses NONZERO random adapters."""
import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory import merge as M
from theory import merge_claims as C
from theory.claims import ClaimSettings


def adapters(ranks=(2, 1, 3), d_out=7, d_in=6, seed=0):
    return C.random_adapters(ranks, d_out, d_in, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("weights", [None, [1.0, 1.0, 1.0], [0.7, -0.2, 0.5]], ids=["average", "sum", "signed"])
def test_MERGE_1_cat_is_exactly_the_weighted_sum_with_rank_sum_r(weights):
    """MERGE-1: cat's delta equals sum_i w_i delta_i (oracle: the adapters applied one by one)
    and has rank sum r_i."""
    ads = adapters()
    w = weights or [1 / 3] * 3
    merged = M.cat(ads, weights)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=C.DTYPE)
    one_by_one = sum(wi * a.scale * (x @ a.A.T) @ a.B.T for wi, a in zip(w, ads))
    assert torch.allclose(x @ merged.delta.T, one_by_one, atol=1e-12)
    assert merged.rank == M.numerical_rank(merged.delta) == 6
    assert float(merged.delta.abs().max()) > 0.1


@pytest.mark.parametrize("r", [1, 2, 3, 4, 5], ids=lambda r: f"r={r}")
def test_MERGE_2_svd_truncation_error_is_the_eckart_young_tail(r):
    """MERGE-2: ||delta - svd_r(delta)||_F = sqrt(sum_{i>r} sigma_i^2) (> 0 below the rank),
    and projections onto 50 random rank-r column spaces are all worse."""
    delta = M.weighted_delta_sum(adapters())
    sigma = torch.linalg.svdvals(delta)
    err = float(torch.linalg.matrix_norm(delta - M.svd_truncate(delta, r).delta))
    assert err == pytest.approx(float(sigma[r:].square().sum().sqrt()), abs=1e-10)
    assert M.eckart_young_error(delta, r) == pytest.approx(err, abs=1e-10)
    assert err > 1e-3  # rank 6 > r: truncation is lossy
    g = torch.Generator().manual_seed(2)
    for _ in range(50):
        Q, _ = torch.linalg.qr(torch.randn(7, r, generator=g, dtype=C.DTYPE))
        assert float(torch.linalg.matrix_norm(delta - Q @ Q.T @ delta)) > err


def test_MERGE_2_svd_truncation_is_exact_at_full_rank():
    delta = M.weighted_delta_sum(adapters())
    assert M.eckart_young_error(delta, 6) <= 1e-10
    assert torch.allclose(M.svd_truncate(delta, 6).delta, delta, atol=1e-10)


@pytest.mark.parametrize("n", [2, 3, 4], ids=lambda n: f"n={n}")
def test_MERGE_3_factor_average_gap_equals_cross_terms_and_is_nonzero(n):
    """MERGE-3: factor-space average (PEFT linear: sqrt(|w s|) on B, its signed twin on A) =
    weighted delta sum + cross terms; the gap, built here term by term from B_i A_j, is nonzero
    for >= 2 adapters. Unequal scales and one negative weight, where the scale placement and
    the sign handling matter."""
    ads = [dataclasses.replace(a, scale=s) for a, s in zip(adapters(ranks=(2,) * n), (0.5, 2.0, 4.0, 1.0))]
    w = [1.0 / n] * (n - 1) + [-0.5]
    root = [math.sqrt(abs(wi * a.scale)) for wi, a in zip(w, ads)]
    sign = [math.copysign(1.0, wi) for wi in w]
    gap = M.factor_average(ads, w).delta - M.weighted_delta_sum(ads, w)
    oracle = sum(root[i] * sign[j] * root[j] * ads[i].B @ ads[j].A for i in range(n) for j in range(n) if i != j)
    assert torch.allclose(gap, oracle, atol=1e-12)
    assert torch.allclose(gap, M.cross_terms(ads, w), atol=1e-12)
    assert float(torch.linalg.matrix_norm(gap)) > 0.1 * float(torch.linalg.matrix_norm(M.weighted_delta_sum(ads, w)))


def test_MERGE_3_factor_combine_is_the_general_factor_product():
    """factor_combine(a, b): (sum b_i B_i)(sum a_j A_j), checked against the expanded double sum."""
    ads, a, b = adapters(ranks=(2, 2)), [0.3, -1.2], [2.0, 0.7]
    merged = M.factor_combine(ads, a, b)
    assert torch.allclose(merged.delta, sum(b[i] * a[j] * ads[i].B @ ads[j].A for i in range(2) for j in range(2)))
    with pytest.raises(ValueError, match="equal ranks, got \\[1, 2\\]"):
        M.factor_combine(adapters(ranks=(2, 1)), [1.0, 1.0], [1.0, 1.0])


@pytest.mark.parametrize("w", [1.0, -0.7], ids=["w=1", "w=-0.7"])
def test_MERGE_3_single_adapter_has_no_cross_terms(w):
    (a,) = adapters(ranks=(3,))
    assert torch.allclose(M.factor_average([a], [w]).delta, w * a.delta, atol=1e-12)
    assert float(M.cross_terms([a], [w]).abs().max()) == 0.0


def test_MERGE_4_dare_is_unbiased_and_the_mask_alone_is_biased_by_1_minus_p():
    """MERGE-4: mean of 4000 seeded DARE draws is within 4 standard errors of delta (every
    entry); without the 1/(1-p) rescale the mean is (1-p) delta, far outside that band."""
    delta = adapters(ranks=(2,), d_out=4, d_in=3)[0].delta
    p, n = 0.7, 4000
    draws = M.dare(delta.expand(n, 4, 3), p, torch.Generator().manual_seed(3))  # (n, 4, 3)
    se = delta.abs() * math.sqrt(p / ((1 - p) * n))  # per-entry standard error of the mean
    z = (draws.mean(0) - delta) / se
    assert float(z.abs().max()) <= 4.0
    z_mask = ((1 - p) * draws.mean(0) - delta) / se
    assert float(z_mask.abs().min()) > 4.0
    kept = (draws != 0).double().mean()
    assert float(kept) == pytest.approx(1 - p, abs=0.02)


def test_MERGE_4_dare_is_reproducible_and_validates_drop_rate():
    delta = adapters(ranks=(1,))[0].delta
    a = M.dare(delta, 0.5, torch.Generator().manual_seed(4))
    b = M.dare(delta, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="drop_rate=1.0"):
        M.dare(delta, 1.0, torch.Generator())


def test_MERGE_5_ties_elects_the_sign_by_mass_not_by_count():
    """MERGE-5: (+1, +1, -5) elects '-': TIES keeps -5; (+2, +2, -1) keeps mean(2, 2) = 2."""
    votes = [torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([[-5.0, -1.0]])]
    assert M.ties(votes, density=1.0).tolist() == [[-5.0, 2.0]]


def test_MERGE_5_ties_output_has_the_sign_of_the_summed_trimmed_values():
    """MERGE-5 on random deltas: wherever the trimmed values' sum is nonzero, the merged entry
    has that sign and lies between the agreeing values."""
    deltas = [a.delta for a in adapters(ranks=(2, 2, 2, 2))]
    merged = M.ties(deltas, density=0.4)
    trimmed = torch.stack([M.trim_top_k(d, 0.4) for d in deltas])  # (4, 7, 6)
    mass = trimmed.sum(0)
    assert torch.equal(torch.sign(merged), torch.sign(mass))
    agree = torch.where(torch.sign(trimmed) == torch.sign(mass), trimmed, torch.nan)
    nz = mass != 0
    assert bool((merged[nz].abs() <= agree.abs().nan_to_num(0).amax(0)[nz] + 1e-12).all())
    assert bool((merged[nz].abs() >= agree.abs().nan_to_num(math.inf).amin(0)[nz] - 1e-12).all())
    assert int(nz.sum()) > 10


def test_MERGE_6_rank_of_a_sum_generic_equality_and_strict_with_overlap():
    """MERGE-6: rank(delta_1 + delta_2) = r_1 + r_2 generically, = r_1 when B_2 = B_1 C."""
    a1, a2 = adapters(ranks=(2, 2))
    assert M.numerical_rank(a1.delta + a2.delta) == 4
    C2 = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=C.DTYPE)
    shared = M.Factors(A=a2.A, B=a1.B @ C2, scale=a2.scale)
    assert M.numerical_rank(a1.delta + shared.delta) == 2


@settings(max_examples=25, deadline=None)
@given(ranks=st.lists(st.integers(1, 3), min_size=1, max_size=4), d=st.integers(2, 8), seed=st.integers(0, 10_000))
def test_MERGE_6_rank_of_a_sum_never_exceeds_the_sum_of_ranks(ranks, d, seed):
    """MERGE-6 as a property: rank(sum w_i delta_i) <= min(sum r_i, d); equality generically."""
    ads = adapters(ranks=tuple(ranks), d_out=d, d_in=d, seed=seed)
    rank = M.numerical_rank(M.weighted_delta_sum(ads), rtol=1e-9)
    assert rank <= min(sum(ranks), d)
    assert rank == min(sum(ranks), d)


@pytest.mark.parametrize("claim_fn", [C.merge1, C.merge2, C.merge3, C.merge4, C.merge5, C.merge6],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("seed", [0, 1])
def test_MERGE_claims_pass(claim_fn, seed):
    checks = claim_fn(ClaimSettings(seed=seed))
    assert checks and all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_MERGE_1_check_fails_if_cat_drops_the_weights(monkeypatch):
    """The checks can fail: a cat that ignores the weights is caught by MERGE-1.exact."""
    monkeypatch.setattr(C, "cat", lambda ads, weights=None: M.cat(ads, None))
    assert not next(c for c in C.merge1(ClaimSettings()) if c.id == "MERGE-1.exact").passed


def test_MERGE_3_check_fails_for_the_old_scale_on_A_formula(monkeypatch):
    """The checks can fail: B = sum sqrt(w) B_i, A = sum sqrt(w) s_i A_i (this repo's factor
    average before it matched PEFT) differs at unequal scales: MERGE-3.gap and .sympy go red."""
    old = lambda ads, weights=None: M.factor_combine(  # noqa: E731
        ads, [math.sqrt(w) * a.scale for w, a in zip(weights, ads)], [math.sqrt(w) for w in weights])
    monkeypatch.setattr(C, "factor_average", old)
    failed = {c.id for c in C.merge3(ClaimSettings()) if not c.passed}
    assert {"MERGE-3.gap", "MERGE-3.sympy"} <= failed


def test_MERGE_4_check_fails_if_dare_forgets_the_rescale(monkeypatch):
    monkeypatch.setattr(C, "dare", lambda d, p, g: M.dare(d, p, g) * (1 - p))
    assert not next(c for c in C.merge4(ClaimSettings()) if c.id == "MERGE-4.unbiased").passed


def test_merge_rejects_bad_inputs():
    """Fixes in theory/merge.py: a negative rank used to slice S[-k:] silently; an empty
    adapter list used to divide by zero."""
    delta = adapters(ranks=(2,))[0].delta
    with pytest.raises(ValueError, match="rank=-1"):
        M.eckart_young_error(delta, -1)
    with pytest.raises(ValueError, match="adapters is empty"):
        M.weighted_delta_sum([])
