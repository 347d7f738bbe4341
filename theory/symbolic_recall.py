"""SymPy counterparts of P1 and the T2 decomposition on small symbolic matrices.

Each ``*_residuals`` function returns named residuals (matrices) that are identically zero
exactly when the claim's algebra holds; ``*_sympy_check`` turns them into one Check whose
measurement is the number of residual entries that do NOT cancel to 0.
"""
from __future__ import annotations

import sympy as sp

from theory.claims import Check


def _vec(name: str, n: int) -> sp.Matrix:
    return sp.Matrix(sp.symbols(f"{name}1:{n + 1}", real=True))  # (n, 1)


def _mat(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}{i + 1}{j + 1}", real=True))


def _sq(v: sp.Matrix) -> sp.Expr:
    return (v.T * v)[0, 0]


def p1_residuals(n_entities: int = 3, m: int = 3) -> dict[str, sp.Matrix]:
    """P1 with a symbolic key ``v``, change ``delta``, other key ``w``, free matrix ``M``:
    ``DW = delta v^T/||v||^2`` solves ``DW v = delta``; moves ``w`` by ``delta <v,w>/||v||^2``;
    every other solution ``DW + M (I - v v^T/||v||^2)`` has ``||.||_F^2 = ||DW||_F^2 +
    ||M (I - P_v)||_F^2`` (Pythagoras: the cross term vanishes, so DW is the minimum norm)."""
    v, w, delta = _vec("v", m), _vec("w", m), _vec("d", n_entities)
    M = _mat("M", n_entities, m)
    DW = delta * v.T / _sq(v)  # (|E|, m)
    off = M * (sp.eye(m) - v * v.T / _sq(v))  # component of another solution orthogonal to DW
    X = DW + off
    frob = lambda A: sum(a**2 for a in A)  # noqa: E731
    return {
        "exact": DW * v - delta,
        "locality": DW * w - delta * (v.T * w)[0, 0] / _sq(v),
        "other_solution_exact": X * v - delta,
        "pythagoras": sp.Matrix([frob(X) - frob(DW) - frob(off)]),
        "rank_one": sp.Matrix([DW[:2, :2].det()]),  # every 2x2 minor of an outer product is 0
    }


def t2_residuals(n_entities: int = 3, m: int = 3) -> dict[str, sp.Matrix]:
    """T2 decomposition with symbolic ``W``, keys ``v1, v2, v'``, changes ``delta1, delta2`` and
    weights ``c1, c2`` (any merge; a router's input-dependent c is a value per token):
    ``(W + c1 DW1 + c2 DW2) v' = W v' + sum_i c_i <v_i,v'>/||v_i||^2 delta_i``; and for a
    prompt key orthogonal to v2 the delta2 term (the only one that can raise z~) vanishes."""
    W = _mat("W", n_entities, m)
    v1, v2, vp = _vec("a", m), _vec("b", m), _vec("p", m)
    d1, d2 = _vec("e", n_entities), _vec("f", n_entities)
    c1, c2 = sp.symbols("c1 c2", real=True)
    DW1, DW2 = d1 * v1.T / _sq(v1), d2 * v2.T / _sq(v2)
    decomposed = lambda k: (W * k + c1 * (v1.T * k)[0, 0] / _sq(v1) * d1  # noqa: E731
                            + c2 * (v2.T * k)[0, 0] / _sq(v2) * d2)
    orth = vp - v2 * (v2.T * vp)[0, 0] / _sq(v2)  # v' with its v2 component removed
    return {
        "identity": (W + c1 * DW1 + c2 * DW2) * vp - decomposed(vp),
        "orthogonal_no_z_gain": (W + c1 * DW1 + c2 * DW2) * orth - (W * orth + c1 * (v1.T * orth)[0, 0] / _sq(v1) * d1),
    }


def p1_lora_residuals(r: int = 2, m: int = 3) -> dict[str, sp.Matrix]:
    """P1-LORA (theory/p1_lora.py) in the reduced coordinates ``B = delta beta^T``,
    ``p = A v`` (vectors in R^r), scalar residual ``e``, ``c = ||v||^2 ||delta||^2``, scale g:
    gradient flow ``beta' = -g e p``, ``p' = -g c e beta`` conserves ``c |beta|^2 - |p|^2`` and
    the bivector ``beta ^ p``; one GD step of size eta multiplies the first by exactly
    ``1 - c eta^2 g^2 e^2``; the flow's limit ``g b q = 1`` with ``q^2 = (U + sqrt(U^2 +
    4c/g^2))/2`` satisfies ``c b^2 - q^2 = -U`` (``U = ||A0 v||^2``, the invariant at init); and
    ``w = v/||v||^2 + n/q`` with ``n _|_ v`` makes the edit exact (``w . v = 1``)."""
    beta, p, z, v = _vec("beta", r), _vec("p", r), _vec("z", m), _vec("v", m)
    e, eta, q = sp.symbols("e eta q", real=True)
    c, g, U = sp.symbols("c g U", positive=True)
    d_beta, d_p = -g * e * p, -g * c * e * beta  # flow
    inv = lambda b, pp: c * _sq(b) - _sq(pp)  # noqa: E731
    Q = (U + sp.sqrt(U**2 + 4 * c / g**2)) / 2  # q^2 at the limit
    n = z - v * (v.T * z)[0, 0] / _sq(v)  # any vector orthogonal to v
    return {
        "flow_invariant": sp.Matrix([2 * c * (beta.T * d_beta)[0, 0] - 2 * (p.T * d_p)[0, 0]]),
        "flow_bivector": sp.Matrix([d_beta[0] * p[1] + beta[0] * d_p[1] - d_beta[1] * p[0] - beta[1] * d_p[0]]),
        "gd_step": sp.Matrix([inv(beta + eta * d_beta, p + eta * d_p) - inv(beta, p) * (1 - c * eta**2 * g**2 * e**2)]),
        "limit": sp.Matrix([sp.expand(c / (g**2 * Q) - Q + U) * Q]),
        "exact_on_v": sp.Matrix([((v / _sq(v) + n / q).T * v)[0, 0] - 1]),
    }


def average_tie_residuals(m: int = 2) -> dict[str, sp.Matrix]:
    """T2 with the uniform average ``c1 = c2 = 1/2`` on a prompt whose key IS ``v2`` (a perfect
    bridge), entities ``(old, z~, y~) = (0, 1, 2)``: every ``W`` that stores ``v2 -> old``
    (``W = i_old v2^T/||v2||^2 + M (I - P_v2)``), adapter 1's key orthogonal to v2 (any change
    ``delta1``), adapter 2 the P1 edit ``v2 -> z~``. Then the logits are ``(i_old + i_z)/2``:
    z~ and the old answer TIE at 1/2, so z~ does not win although the model composes."""
    v2, a, M, d1 = _vec("b", m), _vec("a", m), _mat("M", 3, m), _vec("e", 3)
    P = v2 * v2.T / _sq(v2)
    v1 = a - P * a  # adapter 1's key, orthogonal to v2
    old, z = sp.eye(3)[:, 0], sp.eye(3)[:, 1]
    W = old * v2.T / _sq(v2) + M * (sp.eye(m) - P)
    DW1, DW2 = d1 * v1.T / _sq(v1), (z - W * v2) * v2.T / _sq(v2)
    return {"average_bridge_tie": (W + (DW1 + DW2) / 2) * v2 - (old + z) / 2}


def nonzero_entries(residuals: dict[str, sp.Matrix]) -> int:
    """Entries that do not cancel to 0 (rational functions: ``cancel`` decides exactly)."""
    return sum(sp.cancel(sp.together(e)) != 0 for R in residuals.values() for e in R)


def _check(claim_id: str, statement: str, residuals: dict[str, sp.Matrix]) -> Check:
    bad = nonzero_entries(residuals)
    return Check(f"{claim_id}.sympy", statement, 0, bad, 0, bad == 0,
                 {"identities": sorted(residuals), "entries": sum(len(R) for R in residuals.values())})


def p1_sympy_check() -> Check:
    return _check("P1", "SymPy: exact, locality, min norm, rank one (non-zero entries)", p1_residuals())


def p1_lora_sympy_check() -> Check:
    return _check("P1-LORA", "SymPy: flow invariants, exact GD-step factor, closed-form limit, w.v = 1 "
                  "(non-zero entries)", p1_lora_residuals())


def t2_sympy_check() -> Check:
    return _check("T2", "SymPy: decomposition; v' _|_ v2 -> no delta2 term; average on a bridge key ties "
                  "(non-zero entries)", {**t2_residuals(), **average_tie_residuals()})
