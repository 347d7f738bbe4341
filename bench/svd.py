"""The SVD of a merged delta through its factors (``theory.merge.factored_svd``: QR of the
stacked factors + an ``R x R`` SVD) against a dense SVD of the same ``d x d`` delta.

The merged delta is a uniform average of rank-8 adapters (total rank R = 8 x their number),
with Gaussian factors. The dense side forms the delta and takes its thin SVD (what
``svd_truncate(weighted_delta_sum(...))`` does); both give the rank-R truncation. Agreement:
``||U_f S_f Vh_f - U_d S_d Vh_d||_F / ||delta||_F`` over the top R triplets.
"""
from __future__ import annotations

import time

import torch

from bench.measure import Row, interleaved, sync
from theory.merge import Factors, factored_svd, weighted_delta_sum


def _bank(d: int, total_rank: int, device: torch.device) -> list[Factors]:
    g = torch.Generator().manual_seed(total_rank)
    return [Factors((torch.randn(8, d, generator=g) / d ** 0.5).to(device), torch.randn(d, 8, generator=g).to(device))
            for _ in range(total_rank // 8)]


def svd(device: torch.device, quick: bool) -> list[Row]:
    cases = [(2048, 8), (2048, 64), (4096, 32)] if quick else [(d, r) for d in (2048, 4096) for r in (8, 32, 64)]
    rows = []
    for d, R in cases:
        bank = _bank(d, R, device)
        sync(device)
        start = time.perf_counter()  # one dense SVD: seconds to minutes, its own timing is stable
        U, S, Vh = torch.linalg.svd(weighted_delta_sum(bank), full_matrices=False)
        sync(device)
        dense = time.perf_counter() - start
        factored = interleaved({"f": lambda: factored_svd(bank)}, repeats=5, device=device)["f"]
        Uf, Sf, Vhf = factored_svd(bank)
        delta = weighted_delta_sum(bank)
        gap = ((Uf * Sf) @ Vhf - (U[:, :R] * S[:R]) @ Vh[:R]).norm()
        shape = f"{d}x{d}, total rank {R} ({R // 8} adapters of rank 8), float32"
        target = (d, R) == (4096, 32)
        rows.append(Row(f"svd_factored_speed_{d}_r{R}", 1 / factored, 1 / dense, "SVDs/s",
                        (">=", 20.0) if target else None, f"{shape}; reference: dense thin SVD"))
        rows.append(Row(f"svd_factored_agreement_{d}_r{R}", float(gap), float(delta.norm()), "Frobenius norm",
                        ("<=", 1e-5) if target else None,
                        f"{shape}; value: ||factored - dense rank-{R} truncation||_F, reference: ||delta||_F"))
    return rows
