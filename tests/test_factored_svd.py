"""MERGE-2 through the factors (``theory.merge.factored_svd``) against the dense SVD oracle."""
import pytest
import torch

from theory.merge import Factors, factored_svd, weighted_delta_sum
from conftest import seeded


def bank(ranks, d_out=40, d_in=30, seed=0):
    g = seeded(seed)
    return [Factors(torch.randn(r, d_in, generator=g, dtype=torch.float64),
                    torch.randn(d_out, r, generator=g, dtype=torch.float64), scale=0.5 + i) for i, r in enumerate(ranks)]


@pytest.mark.parametrize("ranks,weights", [pytest.param((2, 3, 1), None, id="average,R=6"),
                                           pytest.param((4, 4), (1.0, -0.7), id="weighted,R=8"),
                                           pytest.param((20, 25), (1.0, 1.0), id="R=45>d_in")])
def test_factored_svd_equals_dense_svd_of_the_merged_delta(ranks, weights):
    adapters = bank(ranks)
    delta = weighted_delta_sum(adapters, weights)  # the dense oracle
    U, S, Vh = factored_svd(adapters, weights)
    k = min(sum(ranks), *delta.shape)
    assert U.shape == (40, k) and S.shape == (k,) and Vh.shape == (k, 30)
    torch.testing.assert_close(U * S @ Vh, delta, rtol=0, atol=1e-10)
    torch.testing.assert_close(S, torch.linalg.svdvals(delta)[:k], rtol=0, atol=1e-10)
    torch.testing.assert_close(U.T @ U, torch.eye(k, dtype=U.dtype), rtol=0, atol=1e-10)
    torch.testing.assert_close(Vh @ Vh.T, torch.eye(k, dtype=U.dtype), rtol=0, atol=1e-10)
    assert torch.all(S[:-1] >= S[1:])


def test_factored_svd_top_vectors_match_the_dense_ones_up_to_sign():
    adapters = bank((3, 2), seed=1)
    U, S, Vh = factored_svd(adapters, (1.0, 2.0))
    Ud, Sd, Vhd = torch.linalg.svd(weighted_delta_sum(adapters, (1.0, 2.0)), full_matrices=False)
    signs = torch.sign((U * Ud[:, :5]).sum(0))  # (5,)
    torch.testing.assert_close(U * signs, Ud[:, :5], rtol=0, atol=1e-9)
    torch.testing.assert_close(Vh * signs[:, None], Vhd[:5], rtol=0, atol=1e-9)
