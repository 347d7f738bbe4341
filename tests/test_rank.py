"""RANK-1: "to make N new facts exact an update must satisfy DW K = D, so rank(DW) >= rank(D);
with linearly independent keys the best rank-r error min ||DW K - D||_F equals the
Eckart-Young tail sqrt(sum_{i>r} sigma_i(D)^2)"."""
import pytest
import torch

from theory import rank as R
from theory.claims import ClaimSettings
from theory.merge import numerical_rank

COUNTS = [3, 2, 1, 1]  # 7 facts, rank(D) = 4, sigma^2 = 6, 4, 2, 2


def facts(seed=0, counts=COUNTS):
    return R.shared_change_facts(counts, d_key=9, d_vocab=10, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("r", [4, 5, 7], ids=lambda r: f"r={r}")
def test_RANK_1_exact_at_and_above_rank_D(r):
    """RANK-1: a rank-r update stores every fact exactly once r >= rank(D)."""
    f = facts()
    assert numerical_rank(f.D) == len(COUNTS)
    update = R.optimal_update(f, r)
    assert f.error(update.delta) <= 1e-10
    assert numerical_rank(update.delta) == len(COUNTS)  # it uses rank(D), not r, directions


@pytest.mark.parametrize("r", [0, 1, 2, 3], ids=lambda r: f"r={r}")
def test_RANK_1_error_below_rank_D_is_the_closed_form_tail(r):
    """RANK-1: below rank(D) the best error is the EY tail; for shared one-hot changes it is
    sqrt(2 * number of facts on the dropped changes), computed without any SVD."""
    f = facts()
    err = f.error(R.optimal_update(f, r).delta)
    expected = (2.0 * sum(sorted(COUNTS, reverse=True)[r:])) ** 0.5
    assert err == pytest.approx(expected, abs=1e-10)
    assert err >= 2 ** 0.5 - 1e-10  # at least one change (2 entries of size 1) is missing


def test_RANK_1_every_exact_update_has_rank_at_least_rank_D():
    """RANK-1: DW K = D forces rank(DW) >= rank(D): exact updates D pinv(K) + Y (I - K pinv(K))
    with random Y all have rank >= 4, and the rank-3 optimum is not exact."""
    f = facts()
    gen = torch.Generator().manual_seed(1)
    P = torch.linalg.pinv(f.K)  # (N, m)
    null = torch.eye(f.K.shape[0], dtype=f.K.dtype) - f.K @ P  # (m, m), kills the keys
    for _ in range(20):
        Y = torch.randn(f.D.shape[0], f.K.shape[0], generator=gen, dtype=f.K.dtype)  # (d_vocab, m), any size
        dW = f.D @ P + Y @ null
        assert f.error(dW) <= 1e-9
        assert numerical_rank(dW) >= numerical_rank(f.D)
    assert f.error(R.optimal_update(f, 3).delta) > 1.0


def test_RANK_1_no_random_rank_r_update_beats_the_tail():
    """RANK-1 lower bound: random rank-2 B @ A (least-squares fitted B) never beats the tail."""
    f = facts()
    tail = f.error(R.optimal_update(f, 2).delta)
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        A = torch.randn(2, f.K.shape[0], generator=gen, dtype=f.K.dtype)
        B = torch.linalg.lstsq((A @ f.K).T, f.D.T).solution.T  # best B for this A: (d_vocab, 2)
        assert f.error(B @ A) >= tail - 1e-10


@pytest.mark.parametrize("r", [1, 3, 4], ids=lambda r: f"r={r}")
def test_RANK_1_trained_lora_approaches_the_optimum(r):
    """RANK-1: Adam-trained rank-r B @ A (LoRA init B = 0) ends within 2% of the optimum."""
    f = facts()
    best = f.error(R.optimal_update(f, r).delta)
    trained = R.trained_update(f, r, torch.Generator().manual_seed(3))
    assert trained.B.shape[1] == r
    err = f.error(trained.delta)
    assert best - 1e-9 <= err <= best + 0.02 * max(best, 1.0)


def test_RANK_1_dependent_keys_rejected():
    f = facts()
    K = f.K.clone()
    K[:, 1] = 2 * K[:, 0]  # fact 1's key duplicates fact 0's
    with pytest.raises(ValueError, match="K has rank"):
        R.optimal_update(R.FactSystem(K=K, D=f.D), 2)


@pytest.mark.parametrize("kwargs, field", [
    (dict(counts=[2, 0], d_key=9, d_vocab=10), "counts"),
    (dict(counts=[], d_key=9, d_vocab=10), "counts"),
    (dict(counts=[5, 5], d_key=9, d_vocab=10), "d_key"),
    (dict(counts=[1, 1, 1], d_key=9, d_vocab=5), "d_vocab"),
], ids=["zero count", "no facts", "too few key dims", "too few entities"])
def test_RANK_1_bad_fact_system_raises(kwargs, field):
    with pytest.raises(ValueError, match=field):
        R.shared_change_facts(generator=torch.Generator(), **kwargs)


def test_RANK_1_bad_rank_raises():
    with pytest.raises(ValueError, match="rank=-1"):
        R.optimal_update(facts(), -1)


@pytest.mark.parametrize("seed", [0, 1])
def test_RANK_1_claim_passes_and_carries_figure_data(seed):
    """The registered RANK-1 checks pass for two seeds and carry the plotted numbers."""
    checks = R.rank1(ClaimSettings(seed=seed))
    assert [c.id for c in checks][:1] == ["RANK-1.exact"]
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    data = checks[0].data
    assert len(data["ranks"]) == len(data["predicted"]) == len(data["construction"]) == len(data["trained"])


def test_RANK_1_claim_fails_when_the_construction_is_wrong(monkeypatch):
    """The checks can fail: a construction that ignores the keys' pseudo-inverse is caught."""
    original = R.optimal_update

    def wrong(f, r):
        out = original(f, r)
        return R.Factors(A=out.A * 1.1, B=out.B)

    monkeypatch.setattr(R, "optimal_update", wrong)
    failed = {c.id for c in R.rank1(ClaimSettings()) if not c.passed}
    assert {"RANK-1.exact", "RANK-1.tail"} <= failed
