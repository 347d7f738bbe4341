"""SymPy counterparts of P1, P1-LORA and the T2 decomposition (theory/symbolic_recall.py)."""
import sympy as sp

from theory.symbolic_recall import (_sq, _vec, average_tie_residuals, nonzero_entries, p1_lora_residuals,
                                    p1_lora_sympy_check, p1_residuals, p1_sympy_check, t2_residuals, t2_sympy_check)


def test_P1_sympy_identities_cancel():
    """P1: DW = delta v^T/||v||^2 solves DW v = delta, moves w by delta <v,w>/||v||^2, has
    minimum norm (Pythagoras) and rank one - identically in the symbols."""
    res = p1_residuals()
    assert set(res) == {"exact", "locality", "other_solution_exact", "pythagoras", "rank_one"}
    assert nonzero_entries(res) == 0
    assert p1_sympy_check().passed


def test_P1_sympy_detects_a_wrong_formula():
    """Two-sided: dividing by ||v|| instead of ||v||^2 leaves non-cancelling entries."""
    v, delta = _vec("v", 3), _vec("d", 3)
    wrong = delta * v.T / sp.sqrt(_sq(v))
    assert nonzero_entries({"exact": wrong * v - delta}) == 3


def test_T2_sympy_identities_cancel():
    """T2: "(W + DW) v' = W v' + c1 (<v1,v'>/||v1||^2) delta1 + c2 (<v2,v'>/||v2||^2) delta2"."""
    assert nonzero_entries(t2_residuals()) == 0
    assert t2_sympy_check().passed


def test_T2_sympy_detects_a_missing_term():
    """Two-sided: the decomposition without its delta2 term does not cancel (so the check
    can fail), while the residuals of t2_residuals do."""
    W = sp.Matrix(2, 2, sp.symbols("w1:5", real=True))
    v1, v2, vp, d1, d2 = (_vec(n, 2) for n in "abpef")
    c1, c2 = sp.symbols("c1 c2", real=True)
    merged = (W + c1 * d1 * v1.T / _sq(v1) + c2 * d2 * v2.T / _sq(v2)) * vp
    without_delta2 = W * vp + c1 * (v1.T * vp)[0, 0] / _sq(v1) * d1
    assert nonzero_entries({"missing": merged - without_delta2}) == 2
    assert nonzero_entries(t2_residuals(n_entities=2, m=2)) == 0


def test_T2_sympy_average_on_a_bridge_key_ties():
    """T2, uniform average on a key equal to v2: z~ and the old answer both get exactly 1/2 (a
    tie, for every W storing v2 -> old and any delta1 with v1 _|_ v2); two-sided: the sum merge
    (c = 1) does not give (i_old + i_z)/2."""
    assert nonzero_entries(average_tie_residuals()) == 0
    v2, a, d1 = _vec("b", 2), _vec("a", 2), _vec("e", 3)
    P = v2 * v2.T / _sq(v2)
    v1 = a - P * a
    old, z = sp.eye(3)[:, 0], sp.eye(3)[:, 1]
    W = old * v2.T / _sq(v2)
    summed = (W + d1 * v1.T / _sq(v1) + (z - old) * v2.T / _sq(v2)) * v2
    assert nonzero_entries({"sum": summed - (old + z) / 2}) == 2  # old -> 0, z~ -> 1: a win, not a tie


def test_P1_LORA_sympy_invariants_cancel():
    """P1-LORA: the flow's invariants, the exact per-step factor 1 - c eta^2 g^2 e^2 and the
    closed-form limit cancel identically; two-sided: a wrong factor or limit does not."""
    res = p1_lora_residuals()
    assert set(res) == {"flow_invariant", "flow_bivector", "gd_step", "limit", "exact_on_v"}
    assert nonzero_entries(res) == 0 and p1_lora_sympy_check().passed
    beta, p = _vec("beta", 2), _vec("p", 2)
    e, eta = sp.symbols("e eta", real=True)
    c, g, U = sp.symbols("c g U", positive=True)
    inv = lambda b, pp: c * _sq(b) - _sq(pp)  # noqa: E731
    step = inv(beta - eta * g * e * p, p - eta * g * c * e * beta)
    assert nonzero_entries({"no_factor": sp.Matrix([step - inv(beta, p)])}) == 1  # GD does NOT conserve it
    Q = (U + sp.sqrt(U**2 + 2 * c / g**2)) / 2  # 2c instead of 4c
    assert nonzero_entries({"wrong_limit": sp.Matrix([sp.expand(c / (g**2 * Q) - Q + U) * Q])}) == 1
