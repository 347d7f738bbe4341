"""P1 - a single-fact edit is rank one (paper: Proposition 1)."""
import pytest
import torch

from theory.claims import ClaimSettings
from theory.merge import numerical_rank
from theory.p1 import gd_edit, p1_claim, predicted_flips
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
