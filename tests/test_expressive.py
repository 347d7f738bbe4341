"""RANK-2 (Zeng & Lee, ICLR 2024): "LoRA on a frozen net of depth L, width D can represent
any target net of depth L~ exactly when rank >= ceil(D * L~ / L) (under their
non-singularity assumption), with a quantified error below" - for linear nets the optimum
is sigma_{RL+1}(E), exact iff R >= ceil(rank(E) / L); "for transformers, rank D/2 suffices
to match a same-size target"."""
import math

import numpy as np
import pytest
import torch

from theory import expressive as X
from theory import expressive_tfn as T
from theory.claims import ClaimSettings
from theory.merge import numerical_rank
from theory.rank2 import rank2


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def linear_pair(D, L, Lt, seed=0):
    g = gen(seed)
    frozen, target = X.random_layers(L, D, g), X.random_layers(Lt, D, g)
    return frozen, X.product(target)


def adapted_product(frozen, deltas):
    return X.product([W + dW for W, dW in zip(frozen, deltas)])


@pytest.mark.parametrize("D, L", [(4, 2), (6, 3), (8, 4)], ids=lambda v: str(v))
def test_RANK_2_linear_exact_at_threshold_and_sigma_tail_below(D, L):
    """RANK-2 linear: exact at R = ceil(rank(E)/L); at R = threshold - 1 the spectral gap is
    sigma_{RL+1}(E) and the Frobenius gap the EY tail (numpy SVD as the oracle)."""
    frozen, target = linear_pair(D, L, 2)
    E = (target - X.product(frozen)).numpy()
    sigma = np.linalg.svd(E, compute_uv=False)
    threshold = math.ceil(np.linalg.matrix_rank(E) / L)
    exact = adapted_product(frozen, X.linear_construction(frozen, target, threshold).deltas)
    assert torch.allclose(exact, target, atol=1e-9)
    R = threshold - 1
    gap = (adapted_product(frozen, X.linear_construction(frozen, target, R).deltas) - target).numpy()
    assert np.linalg.norm(gap, 2) == pytest.approx(sigma[R * L], abs=1e-9)
    assert np.linalg.norm(gap) == pytest.approx(np.sqrt((sigma[R * L:] ** 2).sum()), abs=1e-9)
    assert sigma[R * L] > 1e-3
    assert X.linear_prediction(frozen, target, R)[0] == pytest.approx(sigma[R * L], abs=1e-12)


def test_RANK_2_linear_lower_bound_holds_for_random_rank_R_adapters():
    """RANK-2 linear: no rank-R adapters beat sigma_{RL+1}(E) (the product gap has rank <= RL)."""
    frozen, target = linear_pair(6, 2, 1)
    R = 2
    bound = X.linear_prediction(frozen, target, R)[0]
    built = adapted_product(frozen, X.linear_construction(frozen, target, R).deltas)
    assert float(torch.linalg.matrix_norm(built - target, ord=2)) == pytest.approx(bound, abs=1e-10)
    g = gen(5)
    for _ in range(30):
        deltas = [0.3 * torch.randn(6, R, generator=g, dtype=X.DTYPE) @ torch.randn(R, 6, generator=g, dtype=X.DTYPE)
                  for _ in frozen]
        assert float(torch.linalg.matrix_norm(adapted_product(frozen, deltas) - target, ord=2)) >= bound - 1e-10


@pytest.mark.parametrize("R", [1, 2, 3], ids=lambda r: f"R={r}")
def test_RANK_2_constructed_adapters_have_rank_at_most_R(R):
    """Each dW_l of the construction has rank <= R (it is one R-chunk of E's SVD, mapped)."""
    frozen, target = linear_pair(6, 3, 2)
    built = X.linear_construction(frozen, target, R)
    assert all(numerical_rank(dW, rtol=1e-9) <= R for dW in built.deltas)
    assert built.min_sigma > 1e-4  # the non-singularity assumption holds for this draw
    for dW in built.deltas:  # and writing it as rank-R LoRA factors loses nothing
        assert torch.allclose(X.lora_rank(dW, R), dW, atol=1e-10)


def relu_pair(D, L, Lt, seed=0):
    g = gen(seed)
    return X.random_fnn(L, D, g), X.random_fnn(Lt, D, g)


def ball_and_sphere(D, g, radius=1.0):
    x = X.sample_ball(300, D, radius, g)
    s = torch.randn(100, D, generator=g, dtype=X.DTYPE)
    return torch.cat([x, radius * s / s.norm(dim=1, keepdim=True)])  # (400, D), incl. the boundary


@pytest.mark.parametrize("D, L, Lt", [(4, 2, 1), (6, 4, 2), (8, 4, 2), (6, 6, 2)], ids=lambda v: str(v))
def test_RANK_2_relu_exact_at_threshold_and_not_below(D, L, Lt):
    """RANK-2 ReLU: exact on the ball (incl. its sphere) at R = ceil(D L~/L), not below.
    Exact up to float64 round-off, which grows with the large inner biases (eps * max|b|)."""
    frozen, target = relu_pair(D, L, Lt)
    x = ball_and_sphere(D, gen(1))
    threshold = math.ceil(D * Lt / L)
    scale = float(target(x).norm(dim=1).mean())
    built = X.relu_construction(frozen, target, threshold)
    round_off = 1e-13 * max(1.0, max(float(b.abs().max()) for b in built.biases))
    assert X.rms_error(built, target, x) <= max(1e-10 * scale, round_off)
    assert X.rms_error(X.relu_construction(frozen, target, threshold - 1), target, x) >= 1e-3 * scale


def test_RANK_2_relu_inner_biases_are_what_keep_the_relus_linear():
    """The large inner biases matter: with them every inner pre-activation is >= 0 on the
    ball; zeroing them (keeping the adapted weights) breaks exactness."""
    frozen, target = relu_pair(6, 4, 2)
    x = ball_and_sphere(6, gen(2))
    net = X.relu_construction(frozen, target, 3)
    W, b = net.weights, net.biases
    pre0 = x @ W[0].T + b[0]  # inner layer of group 1 (M = 2)
    pre2 = torch.relu(torch.relu(pre0) @ W[1].T + b[1]) @ W[2].T + b[2]  # inner layer of group 2
    assert float(pre0.min()) >= 0.0 and float(pre2.min()) >= 0.0
    broken = X.FNN(weights=net.weights, biases=[b if l % 2 else 0 * b for l, b in enumerate(net.biases)])
    assert X.rms_error(broken, target, x) > 1e-2


def test_RANK_2_trained_lora_keeps_rank_and_frozen_weights():
    """Adam-trained LoRA (batched over ranks) adds rank <= R to each frozen layer and improves
    on the frozen net (reported beside the construction, not required to be exact)."""
    frozen, target = relu_pair(6, 2, 1)
    x = X.sample_ball(500, 6, 1.0, gen(3))
    nets = X.trained_lora(frozen, target, [1, 3], gen(4), steps=50)
    before = X.rms_error(frozen, target, x)
    for R, net in zip([1, 3], nets):
        assert all(numerical_rank(W - W0, rtol=1e-9) <= R for W, W0 in zip(net.weights, frozen.weights))
        assert X.rms_error(net, target, x) < before


def test_RANK_2_linear_fnn_is_the_product():
    frozen, _ = linear_pair(5, 3, 1)
    net = X.FNN(weights=frozen, biases=[torch.zeros(5, dtype=X.DTYPE)] * 3, relu=False)
    x = torch.randn(7, 5, generator=gen(), dtype=X.DTYPE)
    assert torch.allclose(net(x), x @ X.product(frozen).T, atol=1e-12)


def test_RANK_2_bad_inputs_raise():
    frozen, target = relu_pair(4, 3, 2)
    with pytest.raises(ValueError, match="L=3"):
        X.relu_construction(frozen, target, 2)
    f2, t2 = relu_pair(4, 2, 1)
    with pytest.raises(ValueError, match="radius"):
        X.relu_construction(f2, t2, 2, radius=0.0)
    with pytest.raises(ValueError, match="rank=0"):
        X.linear_construction(f2.weights, t2.weights[0], 0)
    with pytest.raises(ValueError, match="ranks"):
        X.trained_lora(f2, t2, [5], gen())
    with pytest.raises(ValueError, match="width"):
        X.random_layers(2, 0, gen())


@pytest.mark.parametrize("D, L, Lt", [(4, 2, 1), (6, 4, 2), (8, 4, 2)], ids=lambda v: str(v))
def test_RANK_2_relu_error_bound_holds_below_the_threshold_and_vanishes_at_it(D, L, Lt):
    """RANK-2, "a quantified error below": the construction's RMS error is at most the bound
    sum_i s_i RMS|z~_i-1| prod_j>i (|W~_j| + s_j), which is > 0 below the threshold, 0 at it,
    and not vacuous (within a factor 20 of the measured error here)."""
    frozen, target = relu_pair(D, L, Lt, seed=4)
    x = ball_and_sphere(D, gen(5))
    threshold = math.ceil(D * Lt / L)
    for R in range(1, threshold):
        err = X.rms_error(X.relu_construction(frozen, target, R), target, x)
        bound = X.relu_error_bound(frozen, target, R, x)
        assert 0.05 * bound < err <= bound + 1e-10
    assert X.relu_error_bound(frozen, target, threshold, x) == 0.0


def test_RANK_2_relu_error_bound_is_attained_on_the_top_singular_direction():
    """Two-sided: for one group the bound is s_1 |x|, and an input along the top right singular
    vector of the group's product gap G attains it exactly; a smaller constant would fail."""
    g = gen(6)
    frozen, target = X.random_fnn(2, 6, g), X.random_fnn(1, 6, g, relu=False)
    built = X.relu_construction(frozen, target, 2)
    G = X.product(built.weights) - target.weights[0]
    x = 0.5 * torch.linalg.svd(G)[2][:1]  # (1, D): top right singular vector, |x| = 0.5
    err, bound = X.rms_error(built, target, x), X.relu_error_bound(frozen, target, 2, x)
    assert err == pytest.approx(bound, rel=1e-9) and bound > 1e-2
    assert bound == pytest.approx(0.5 * X.linear_prediction(frozen.weights, target.weights[0], 2)[0], rel=1e-12)


def test_RANK_2_relu_error_bound_needs_the_growth_through_later_layers():
    """Two-sided: group 1 misses by G_1 (s_1 > 0), group 2 is exact (s_2 = 0) with
    W~_2 = 10 I and a large positive b~_1 (ReLU the identity), so the error is |10 G_1 x|:
    the bound s_1 |x| (|W~_2| + s_2) is attained, and without the growth factor it would fail."""
    g = gen(7)
    frozen = X.random_fnn(2, 4, g)
    u = torch.randn(4, 1, generator=g, dtype=X.DTYPE)
    frozen.weights[1] = 10 * torch.eye(4, dtype=X.DTYPE) + u @ u.T  # E_2 = -u u^T: rank one
    target = X.random_fnn(2, 4, g)
    target.weights[1], target.biases[0] = 10 * torch.eye(4, dtype=X.DTYPE), 100 * torch.ones(4, dtype=X.DTYPE)
    built = X.relu_construction(frozen, target, 1)
    x = 0.5 * torch.linalg.svd(built.weights[0] - target.weights[0])[2][:1]  # top right singular vector of G_1
    err, bound = X.rms_error(built, target, x), X.relu_error_bound(frozen, target, 1, x)
    assert err == pytest.approx(bound, rel=1e-9)
    s1 = X.linear_prediction(frozen.weights[:1], target.weights[0], 1)[0]
    assert s1 > 1e-2 and err > 9 * s1 * 0.5  # ten times what the first group alone misses by


# --- transformers (theory/expressive_tfn.py) ---------------------------------------------


def naive_tfn(net: T.TFN, X_: torch.Tensor) -> torch.Tensor:
    """Independent oracle: one sequence, one head at a time, tokens as COLUMNS like Zeng &
    Lee's write-up: A = sum_h W_O W_V Z softmax_columns((W_K Z)^T (W_Q Z))."""
    out = []
    for seq in X_:
        Z = seq.T  # (D, N)
        for l in range(len(net.W_1)):
            A = torch.zeros_like(Z)
            for h in range(net.W_Q[l].shape[0]):
                scores = (net.W_K[l][h] @ Z).T @ (net.W_Q[l][h] @ Z)  # (N keys, N queries)
                weights = torch.exp(scores - scores.max(0).values) / torch.exp(scores - scores.max(0).values).sum(0)
                A = A + net.W_O[l][h] @ (net.W_V[l][h] @ Z) @ weights
            Z = net.W_2[l] @ torch.relu(net.W_1[l] @ A + net.b_1[l][:, None]) + net.b_2[l][:, None]
        out.append((net.W_o @ Z).T)
    return torch.stack(out)


def tfn_case(D=6, H=2, L=2, seed=0):
    g = gen(seed)
    frozen, target = T.random_tfn(L, H, D, g), T.random_tfn(L, H, D, g)
    return frozen, target, torch.randn(30, 4, D, generator=g, dtype=X.DTYPE)


def test_RANK_2_tfn_forward_matches_an_independent_implementation():
    frozen, target, X_ = tfn_case()
    adapted = T.tfn_construction(frozen, target, 2).adapted  # nonzero adapters
    for net in (frozen, target, adapted):
        assert torch.allclose(net(X_), naive_tfn(net, X_), atol=1e-10)


@pytest.mark.parametrize("D, H, L", [(4, 1, 1), (6, 2, 2), (5, 2, 3)], ids=lambda v: str(v))
def test_RANK_2_tfn_exact_at_ceil_D_over_2_and_not_below(D, H, L):
    """RANK-2, transformers: "rank D/2 suffices to match a same-size target" - exact at
    R = ceil(D/2) (checked against the independent forward), error > 0 at R = ceil(D/2) - 1,
    where each adapted product misses by sigma_{2R+1} of its difference (numpy SVD oracle)."""
    frozen, target, X_ = tfn_case(D, H, L)
    Y = naive_tfn(target, X_)
    R = math.ceil(D / 2)
    built = T.tfn_construction(frozen, target, R)
    assert (built.adapted(X_) - Y).abs().max() < 1e-9 * Y.abs().max()
    assert all(numerical_rank(dW, rtol=1e-9) <= R for dW in built.adapters)
    assert len(built.adapters) == 2 * (2 * H * L + 1)  # W_Q, W_K, W_V, W_O per head and block; W_2, W_o
    assert built.min_sigma > 1e-6
    below = T.tfn_construction(frozen, target, R - 1)
    assert (naive_tfn(below.adapted, X_) - Y).abs().max() > 1e-3 * Y.abs().max()
    for E, P, goal in below.products:
        sigma = np.linalg.svd(E.numpy(), compute_uv=False)
        expected = sigma[2 * (R - 1)] if 2 * (R - 1) < D else 0.0
        assert np.linalg.norm((P - goal).numpy(), 2) == pytest.approx(expected, abs=1e-9)
    assert max(np.linalg.svd(E.numpy(), compute_uv=False)[2 * (R - 1)] for E, _, _ in below.products) > 1e-3


def test_RANK_2_tfn_leaves_the_unadapted_weights_frozen():
    """Only the adapted matrices change: W_1 and every W_2 but the last stay frozen, and the
    FFN biases are the construction's (b_1 = target's)."""
    frozen, target, _ = tfn_case()
    adapted = T.tfn_construction(frozen, target, 3).adapted
    assert all(torch.equal(a, f) for a, f in zip(adapted.W_1, frozen.W_1))
    assert torch.equal(adapted.W_2[0], frozen.W_2[0]) and not torch.equal(adapted.W_2[-1], frozen.W_2[-1])
    assert all(torch.equal(a, t) for a, t in zip(adapted.b_1, target.b_1))


def test_RANK_2_tfn_bad_inputs_raise():
    frozen, _, _ = tfn_case()
    with pytest.raises(ValueError, match="blocks"):
        T.tfn_construction(frozen, T.random_tfn(1, 2, 6, gen()), 3)
    with pytest.raises(ValueError, match="n_heads=0"):
        T.random_tfn(1, 0, 6, gen())


@pytest.mark.parametrize("seed", [0, 1])
def test_RANK_2_claim_passes(seed):
    """The registered RANK-2 checks pass for two seeds; the figure data has every rank."""
    checks = rank2(ClaimSettings(seed=seed))
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    data = checks[0].data
    assert data["linear_threshold"] == 4 and data["relu_threshold"] == 4
    assert len(data["relu"]["sgd"]) == len(data["ranks"]) == len(data["relu"]["bound"]) == 8
    assert {"RANK-2.relu_bound", "RANK-2.tfn", "RANK-2.tfn_below", "RANK-2.tfn_products"} <= {c.id for c in checks}
