"""RANK-2 (Zeng & Lee, ICLR 2024): "LoRA on a frozen net of depth L, width D can represent
any target net of depth L~ exactly when rank >= ceil(D * L~ / L) (under their
non-singularity assumption), with a quantified error below" - for linear nets the optimum
is sigma_{RL+1}(E), exact iff R >= ceil(rank(E) / L)."""
import math

import numpy as np
import pytest
import torch

from theory import expressive as X
from theory.claims import ClaimSettings
from theory.merge import numerical_rank


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


@pytest.mark.parametrize("seed", [0, 1])
def test_RANK_2_claim_passes(seed):
    """The registered RANK-2 checks pass for two seeds; the figure data has every rank."""
    checks = X.rank2(ClaimSettings(seed=seed))
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    data = checks[0].data
    assert data["linear_threshold"] == 4 and data["relu_threshold"] == 4
    assert len(data["relu"]["sgd"]) == len(data["ranks"]) == 8
