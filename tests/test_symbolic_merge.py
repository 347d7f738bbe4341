"""SymPy counterparts of MERGE-1 ("cat is exactly the weighted sum of deltas"), MERGE-3
("merging factors separately adds cross terms B_i A_j") and MERGE-6 ("rank(sum) <= sum of
ranks"), proved on symbolic matrices and tied to theory/merge.py at numeric points."""
import pytest
import sympy as sp
import torch

from theory import merge as M
from theory import merge_claims as C
from theory import symbolic_merge as S


@pytest.mark.parametrize("ranks", [(1, 1), (1, 2), (2, 1, 1)], ids=str)
def test_MERGE_1_sympy_cat_equals_weighted_sum_identically(ranks):
    ads, w = S.symbolic_adapters(2, 3, ranks)
    assert S.is_zero(S.cat_delta(ads, w) - S.weighted_sum(ads, w))
    # the identity is not vacuous: dropping the weights breaks it
    assert not S.is_zero(S.cat_delta(ads, [1] * len(ads)) - S.weighted_sum(ads, w))


def test_MERGE_1_sympy_formula_matches_merge_cat_at_numbers():
    ads, w = S.symbolic_adapters(3, 2, (2, 1))
    num = C.random_adapters((2, 1), 3, 2, torch.Generator().manual_seed(0))
    subs = S.substitution(ads, w, num, [0.6, 0.4])
    assert torch.allclose(S.evaluate(S.cat_delta(ads, w), subs), M.cat(num, [0.6, 0.4]).delta, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3], ids=lambda n: f"n={n}")
def test_MERGE_3_sympy_factor_average_is_sum_plus_cross_terms(n):
    ads, w = S.symbolic_adapters(2, 2, (1,) * n)
    avg, cross = S.factor_average_delta(ads, w), S.cross_terms(ads, w)
    assert S.is_zero(avg - S.weighted_sum(ads, w) - cross)
    assert not S.is_zero(cross)  # the cross terms are real: not identically zero


def test_MERGE_3_sympy_single_adapter_has_no_cross_terms():
    ads, w = S.symbolic_adapters(2, 2, (2,))
    assert S.is_zero(S.cross_terms(ads, w))
    assert S.is_zero(S.factor_average_delta(ads, [1]) - ads[0].delta)


def test_MERGE_3_sympy_matches_merge_code_at_numbers():
    ads, w = S.symbolic_adapters(3, 2, (2, 2))
    num = C.random_adapters((2, 2), 3, 2, torch.Generator().manual_seed(1))
    subs = S.substitution(ads, w, num, [0.3, 0.7])
    assert torch.allclose(S.evaluate(S.factor_average_delta(ads, w), subs),
                          M.factor_average(num, [0.3, 0.7]).delta, atol=1e-12)
    assert torch.allclose(S.evaluate(S.cross_terms(ads, w), subs), M.cross_terms(num, [0.3, 0.7]), atol=1e-12)


def test_MERGE_6_sympy_rank_of_sum_bounded_by_sum_of_ranks():
    """3x3, r = 1 + 1: every 3x3 minor vanishes identically, a 2x2 one does not; with
    B_2 = c B_1 every 2x2 minor vanishes too."""
    ads, _ = S.symbolic_adapters(3, 3, (1, 1))
    total = ads[0].delta + ads[1].delta
    assert sp.expand(total.det(method="berkowitz")) == 0
    assert S.generic_rank(total) == 2
    shared = S.SymAdapter(A=ads[1].A, B=sp.Symbol("c") * ads[0].B, scale=ads[1].scale)
    assert S.generic_rank(ads[0].delta + shared.delta) == 1


def test_generic_rank_on_known_matrices():
    x, y = sp.symbols("x y")
    assert S.generic_rank(sp.eye(3)) == 3
    assert S.generic_rank(sp.Matrix([[x, y], [2 * x, 2 * y]])) == 1
    assert S.generic_rank(sp.zeros(2, 2)) == 0


def test_symbolic_inputs_are_validated():
    with pytest.raises(ValueError, match="ranks"):
        S.symbolic_adapters(2, 2, (0,))
    ads, w = S.symbolic_adapters(2, 2, (1,))
    wrong = C.random_adapters((2,), 2, 2, torch.Generator())
    with pytest.raises(ValueError, match="must match"):
        S.substitution(ads, w, wrong, [1.0])
