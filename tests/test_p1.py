"""P1 - a single-fact edit is rank one (paper: Proposition 1)."""
import pytest
import torch

from theory.claims import ClaimSettings
from theory.merge import numerical_rank
from theory.p1 import gd_edit, p1_claim, predicted_flips
from theory.p1_lora import _off_span, lora_gd_edit, lora_limit, p1_lora_claim, standard_init
from theory.recall import RecallConfig, build_recall_model, one_hot, rank_one_edit

TINY = dict(d_model=16, d_mlp=64, n_entities=16, n_relations=3)


def _edit(keys="raw", seed=0, k=5):
    model = build_recall_model(RecallConfig(**TINY, keys=keys), torch.Generator().manual_seed(seed))
    K = model.stored_keys  # (m, N)
    old = int(model.answers[k])
    new = (old + 3) % model.config.n_entities
    return model, K, k, old, new, rank_one_edit(model, K[:, k], new)


@pytest.mark.parametrize("keys", ["centred", "raw"])
def test_P1_closed_form_is_exact_rank_one_and_moves_others_by_prediction(keys):
    """P1: "DW = delta v^T/||v||^2 (rank one) ... Its effect on any other prompt with key v'
    is delta <v, v'>/||v||^2"."""
    model, K, k, old, new, edit = _edit(keys)
    v, DW, delta = K[:, k], edit.delta, one_hot(new, 16) - one_hot(old, 16)
    assert torch.allclose(model.logits(v, DW), one_hot(new, 16), atol=1e-10)
    assert numerical_rank(DW) == 1 and torch.allclose(edit.B[:, 0], delta, atol=1e-10)
    others = torch.arange(K.shape[1]) != k
    a = v @ K[:, others] / v.dot(v)
    moved = DW @ K[:, others]
    assert torch.allclose(moved, delta[:, None] * a[None, :], atol=1e-10)
    assert moved.norm(dim=0).max() > 0.1  # the other facts DO move (keys overlap) ...


def test_P1_orthogonal_keys_untouched_overlapping_keys_moved():
    """P1: "facts with keys orthogonal to v are untouched" - and only those."""
    model, K, k, _, _, edit = _edit("raw")
    v = K[:, k]
    others = K[:, torch.arange(K.shape[1]) != k]
    ortho = others - v[:, None] * (v @ others / v.dot(v))[None, :]
    assert (edit.delta @ ortho).abs().max() < 1e-12
    # raw keys all overlap positively: every one of them moves by |a| ||delta|| > 0
    a = v @ others / v.dot(v)
    assert torch.allclose((edit.delta @ others).norm(dim=0), a.abs() * 2 ** 0.5, atol=1e-10)
    assert a.min() > 0.05


def test_P1_minimum_norm_against_other_exact_solutions():
    """P1: "the minimum-Frobenius-norm update is DW = delta v^T/||v||^2": every other exact
    solution DW + M(I - P_v) is larger by exactly ||M(I - P_v)||_F^2 (Pythagoras)."""
    model, K, k, old, new, edit = _edit("centred")
    v, DW = K[:, k], edit.delta
    delta = one_hot(new, 16) - one_hot(old, 16)
    assert float(DW.norm()) == pytest.approx(float(delta.norm() / v.norm()), rel=1e-12)
    g = torch.Generator().manual_seed(1)
    for scale in (1e-3, 1.0):
        M = scale * torch.randn(DW.shape, generator=g, dtype=DW.dtype)
        off = M - (M @ v)[:, None] * v[None, :] / v.dot(v)
        X = DW + off
        assert torch.allclose(X @ v, delta, atol=1e-10)
        assert float(X.norm() ** 2 - DW.norm() ** 2) == pytest.approx(float(off.norm() ** 2), rel=1e-6)
    # two-sided: anything smaller than DW along v fails to make the edit
    assert (model.logits(v, 0.9 * DW) - one_hot(new, 16)).abs().max() > 0.05


def test_P1_gradient_descent_from_zero_reaches_the_closed_form():
    """P1: "Gradient descent on the squared error from DW = 0 converges to it" at the
    predicted rate 1 - lr per step."""
    model, K, k, _, new, edit = _edit("centred")
    path = gd_edit(model, K[:, k], new, steps=50, lr=0.5)
    err = (path - edit.delta).flatten(1).norm(dim=1)
    assert err[-1] < 1e-12 and numerical_rank(path[-1]) == 1
    assert torch.allclose(err[1:20] / err[:19], torch.full((19,), 0.5, dtype=err.dtype), atol=1e-9)


def test_P1_gradient_descent_from_nonzero_init_reaches_a_larger_solution():
    """Two-sided P1: from DW0 != 0, GD converges to DW* + DW0 (I - P_v), not to DW*."""
    model, K, k, _, new, edit = _edit("centred")
    v = K[:, k]
    init = 0.05 * torch.randn(edit.delta.shape, generator=torch.Generator().manual_seed(2), dtype=v.dtype)
    limit = edit.delta + init - (init @ v)[:, None] * v[None, :] / v.dot(v)
    final = gd_edit(model, v, new, steps=60, init=init)[-1]
    assert (final - limit).abs().max() < 1e-12
    assert (final - edit.delta).norm() > 0.1 and final.norm() > edit.delta.norm()
    assert (model.logits(v, final) - one_hot(new, 16)).abs().max() < 1e-10  # still exact


def test_P1_predicted_flips_rule():
    """P1 locality: logits become i_j + a (i_new - i_old): the old answer flips iff a > 1/2."""
    a = torch.tensor([0.4, 0.6, -0.6, -0.4, 1.2, 0.9], dtype=torch.float64)
    answers = torch.tensor([0, 0, 1, 1, 2, 2])  # old = 0, new = 1
    assert predicted_flips(a, answers, old=0, new=1).tolist() == [False, True, True, False, True, False]


def test_P1_claim_passes_and_reports_gd_curve():
    checks = p1_claim(ClaimSettings(instances=10))
    assert [c.id for c in checks if not c.passed] == []
    assert {"P1.exact", "P1.locality", "P1.min_norm", "P1.gd_zero_init", "P1.sympy"} <= {c.id for c in checks}
    gd = next(c for c in checks if c.id == "P1.gd_zero_init").data
    assert len(gd["error_zero_init"]) == len(gd["step"]) and gd["error_zero_init"][0] > 1e-3


@pytest.mark.parametrize("kw,msg", [(dict(lr=2.0), "lr=2.0"), (dict(lr=0.0), "lr=0.0"), (dict(steps=0), "steps=0")])
def test_gd_edit_rejects_bad_values(kw, msg):
    model, K, k, _, new, _ = _edit()
    with pytest.raises(ValueError, match=msg):
        gd_edit(model, K[:, k], new, **kw)


# --- P1-LORA: the edit learned by LoRA factors from the standard init (theory/p1_lora.py) ---


def _lora_case(keys="centred", seed=0, rank=2):
    model, K, k, old, new, edit = _edit(keys, seed)
    A0 = standard_init(rank, model.config.d_mlp, torch.Generator().manual_seed(seed + 10))
    return model, K, k, new, edit, A0


def test_P1_LORA_standard_init_is_kaiming_uniform_and_starts_at_zero():
    """Notation contract: B = 0 and A random, so delta = 0 at init; A's entries are
    U(-1/sqrt(m), 1/sqrt(m)) like nn.Linear's kaiming-uniform(a = sqrt(5))."""
    A0 = standard_init(64, 400, torch.Generator().manual_seed(0))
    assert A0.abs().max() <= 1 / 400**0.5 and A0.abs().max() > 0.95 / 400**0.5
    assert float(A0.var()) == pytest.approx(1 / (3 * 400), rel=0.05)
    model, K, k, new, _, A0 = _lora_case()
    assert lora_gd_edit(model, K[:, k], new, A0, steps=1)[0].abs().max() == 0


@pytest.mark.parametrize("keys", ["centred", "raw"])
def test_P1_LORA_iterates_are_rank_one_in_span_v_n_and_the_edit_is_exact(keys):
    """P1-LORA: "every iterate is delta w_t^T with w_t in span{v, n}", and the limit makes the
    edit exactly; two-sided: a different n (another init's) does not span the iterates."""
    model, K, k, new, edit, A0 = _lora_case(keys)
    v, delta = K[:, k], edit.B[:, 0]
    path = lora_gd_edit(model, v, new, A0)
    _, n, _ = lora_limit(v, delta, A0)
    assert _off_span(path, delta, v, n) < 1e-10
    assert all(numerical_rank(D) == 1 for D in path[1::50])
    assert (model.logits(v, path[-1]) - one_hot(new, 16)).abs().max() < 1e-10
    _, n_other, _ = lora_limit(v, delta, standard_init(2, 64, torch.Generator().manual_seed(99)))
    assert _off_span(path, delta, v, n_other) > 1e-3


def test_P1_LORA_converges_to_the_predicted_limit_not_to_the_min_norm_edit():
    """P1-LORA finding: the limit is DW* + delta n^T/q (||DW - DW*|| comparable to ||DW*||),
    equal to the gradient-flow prediction up to O(step): halving the step halves the gap;
    P1's locality prediction for other keys misses the extra delta <n, v'>/q."""
    model, K, k, new, edit, A0 = _lora_case()
    v, delta, star = K[:, k], edit.B[:, 0], edit.delta
    limit, n, q = lora_limit(v, delta, A0)
    gaps = []
    for lr in (0.6, 0.3):
        final = lora_gd_edit(model, v, new, A0, steps=400, lr=lr)[-1]
        gaps.append(float((final - limit).norm() / (limit - star).norm()))
    assert gaps[1] < 0.02 and gaps[1] == pytest.approx(gaps[0] / 2, rel=0.2)  # O(step)
    assert float((final - star).norm()) > 0.3 * float(star.norm())  # NOT the min-norm edit
    assert float(final.norm()) > float(star.norm())
    others = K[:, torch.arange(K.shape[1]) != k]
    extra = final @ others - star @ others  # what P1's locality rule does not predict
    assert torch.allclose(extra, torch.outer(delta, n @ others / q), atol=0.02 * float(extra.abs().max()))
    assert float(extra.abs().max()) > 0.1


def test_P1_LORA_reaches_the_min_norm_edit_only_when_n_vanishes():
    """Two-sided P1-LORA: as the init shrinks the gap to DW* shrinks in proportion
    (||n||/q ~ sigma); with orthonormal A0 (r = m, A0^T A0 = I, n = 0) it is DW* exactly."""
    model, K, k, new, edit, A0 = _lora_case()
    v, star = K[:, k], edit.delta
    dev = [float((lora_gd_edit(model, v, new, s * A0, steps=400)[-1] - star).norm()) for s in (1.0, 1e-3)]
    assert dev[1] < 2e-3 * dev[0] and dev[1] > 0
    Q, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(3), dtype=v.dtype))
    assert (lora_gd_edit(model, v, new, Q.T, steps=400)[-1] - star).abs().max() < 1e-10


def test_P1_LORA_claim_passes():
    checks = p1_lora_claim(ClaimSettings(instances=10))
    assert [c.id for c in checks if not c.passed] == []
    assert {"P1-LORA.exact", "P1-LORA.structure", "P1-LORA.not_min_norm", "P1-LORA.small_init",
            "P1-LORA.orthogonal_init", "P1-LORA.sympy"} <= {c.id for c in checks}
    data = next(c for c in checks if c.id == "P1-LORA.not_min_norm").data
    assert data["deviation"] > 0.5 * data["min_norm"]


@pytest.mark.parametrize("kw,msg", [(dict(lr=2.0), "lr=2.0"), (dict(steps=0), "steps=0")])
def test_lora_gd_edit_rejects_bad_values(kw, msg):
    model, K, k, new, _, A0 = _lora_case()
    with pytest.raises(ValueError, match=msg):
        lora_gd_edit(model, K[:, k], new, A0, **kw)
