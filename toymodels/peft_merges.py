"""PEFT's ``LoraModel.add_weighted_adapter`` as a pure function ``adapters -> Adapter``, number
for number (read from peft 0.21.2; tested against peft itself in ``tests/test_peft_merges.py``).

Registered in ``reuse.MERGES``/``METHODS`` as ``peft_<combination_type>``. Per module, with
weights ``w_i`` and adapter scales ``s_i``, PEFT does:
- FACTOR space (``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``):
  combine the ``A_i`` with coefficients ``sign(w_i s_i) sqrt(|w_i s_i|)`` and the ``B_i`` with
  ``sqrt(|w_i s_i|)`` (``theory.merge.balanced_coefficients``), each by the rule below; the
  adapters must have equal ranks. ``linear`` is ``theory.merge.factor_average``.
- DELTA space (``svd`` and the ``*_svd`` forms): combine ``delta_i = s_i B_i A_i`` with weights
  ``w_i`` by the rule below, then ``B = U_k S_k``, ``A = V_k^T`` (SVD truncated to
  ``k = svd_rank``, default the largest input rank), optionally clamped to
  ``[-q, q]``, ``q`` the ``svd_clamp`` quantile of the entries of ``B`` and ``A`` together.
- ``cat``: the factors stacked, so the delta is exactly ``sum_i w_i delta_i`` (rank
  ``sum r_i``); ``theory.merge.cat`` (PEFT puts ``w_i s_i`` on ``A_i``, ours on ``B_i``: same delta).
Rules on tensors ``t_i`` with coefficients ``c_i`` (``peft.utils.merge_utils``): ``linear``:
``sum c_i t_i``; ``magnitude_prune``: keep the ``floor(density * numel)`` largest ``|entries|``
of each ``t_i`` (``torch.topk``), then sum; ``dare_linear``: keep each entry with probability
``density`` and divide by ``density``, then sum; ``ties`` / ``dare_ties``: prune (by magnitude /
dare), elect per entry the sign of ``sum_i t_i`` (``"total"``) or ``sum_i sign(t_i)``
(``"frequency"``) of the UNWEIGHTED pruned tensors (0 elects +), then average ``c_i t_i`` over
the ``i`` whose sign agrees (``theory.merge.disjoint_mean``).

PEFT's own quirks, reproduced so that the numbers are PEFT's:
- The merged adapter inherits ``use_rslora`` from the FIRST adapter with ``alpha = r_new``, so
  its scale is ``sqrt(r_new)`` instead of 1 (``r_new``: the common rank; the sum of ranks for
  ``cat``; ``svd_rank`` for the SVD forms). Merging ONE rsLoRA adapter at weight 1 then gives
  ``sqrt(r)`` times that adapter (huggingface/peft#3761, open). Our ``factor_average``, ``cat``
  and ``svd`` are the same math without it and give the adapter back.
- With one adapter every ``combination_type`` is ``linear`` (density, svd_rank ignored).
- Ranks are the nominal ones (PEFT: ``max(r, rank_pattern values)``; ours: the config rank
  or the largest module rank).
Where PEFT crashes or silently drops, this module refuses or defines (a one-line ValueError):
- the first adapter restricted to some layers and another not within them (PEFT's merged
  adapter inherits ``layers_to_transform`` and drops the others' modules outside it);
- ``density`` outside ``[0, 1]`` (PEFT: > 1 means 1) and dare ``density = 0`` (PEFT: NaN);
  ``svd_rank`` above ``min(d_out, d_in)`` (PEFT builds an adapter that cannot run);
- options the ``combination_type`` does not use (PEFT ignores them).
A module held by only some adapters merges over those, as in PEFT (which raises only when its
merged adapter lands on a module that no adapter has).
Randomness: dare draws ``torch.bernoulli(density)`` masks from the given ``generator``, per
module (in order of first appearance), ``A`` masks before ``B`` masks, adapter by adapter; PEFT
draws the same from the global RNG in the model's module order, so the draws coincide when the
global RNG is in the generator's state and the paths come in module order.
``weights=None`` is the uniform average ``1/n`` (PEFT has no default).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from theory import merge
from theory.merge import Factors
from toymodels.adapter_merge import merged_adapter
from toymodels.adapters import Adapter

# rule -> (pruning, elect a sign): peft.utils.merge_utils
RULES = {"linear": (None, False), "magnitude_prune": ("magnitude", False), "ties": ("magnitude", True),
         "dare_linear": ("random", False), "dare_ties": ("random", True)}
FACTOR_TYPES = tuple(RULES)
SVD_TYPES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
COMBINATION_TYPES = FACTOR_TYPES + ("cat",) + SVD_TYPES
SIGN_METHODS = ("total", "frequency")


def _rule(combination_type: str) -> str:
    return "linear" if combination_type == "svd" else combination_type.removesuffix("_svd")


def magnitude_prune(t: Tensor, density: float) -> Tensor:
    """PEFT's magnitude pruning: keep the ``int(density * numel)`` entries of largest ``|t|``
    chosen by ``torch.topk`` (exactly that many, ties broken by topk); ``density >= 1`` keeps all."""
    if density >= 1:
        return t
    mask = torch.zeros_like(t).reshape(-1)
    mask[torch.topk(t.abs().reshape(-1), k=int(density * t.numel()), largest=True).indices] = 1
    return t * mask.reshape(t.shape)


def random_prune(t: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """PEFT's dare pruning: keep each entry with probability ``density`` (one Bernoulli draw per
    entry from ``generator``) and divide by ``density``; ``density >= 1`` keeps all, no draw."""
    if density >= 1:
        return t
    return t * torch.bernoulli(torch.full_like(t, density), generator=generator) / density


def majority_sign_mask(t: Tensor, method: str) -> Tensor:
    """PEFT's sign election on stacked UNWEIGHTED tensors ``(n, ...)``: the sign of their sum
    (``"total"``) or of their sign count (``"frequency"``), 0 electing +; True where ``t`` has it."""
    sign = t.sign()
    magnitude = t.sum(dim=0) if method == "total" else sign.sum(dim=0)
    return sign == torch.where(magnitude >= 0, 1, -1)


def combine(tensors: Sequence[Tensor], coeffs: Sequence[float], rule: str, density: float | None = None,
            sign_method: str = "total", generator: torch.Generator | None = None) -> Tensor:
    """One PEFT combination ``rule`` (a key of :data:`RULES`) of ``tensors`` with ``coeffs``."""
    pruning, elect = RULES[rule]
    if pruning == "magnitude":
        tensors = [magnitude_prune(t, density) for t in tensors]
    elif pruning == "random":
        tensors = [random_prune(t, density, generator) for t in tensors]
    stacked = torch.stack(list(tensors))  # (n, rows, cols)
    weighted = stacked * torch.tensor(coeffs, dtype=stacked.dtype, device=stacked.device)[:, None, None]
    return merge.disjoint_mean(weighted, majority_sign_mask(stacked, sign_method)) if elect else weighted.sum(dim=0)


def svd_factors(delta: Tensor, rank: int, clamp: float | None = None, full_matrices: bool = True) -> Factors:
    """PEFT's factoring of a merged delta: ``B = U_k diag(S_k)``, ``A = V_k^T`` (all of ``S`` on
    ``B``, unlike ``theory.merge.svd_truncate``), both clamped to ``[-q, q]`` with ``q`` the
    ``clamp`` quantile of their entries together when ``clamp`` is given."""
    U, S, Vh = torch.linalg.svd(delta, full_matrices=full_matrices)
    B, A = U[:, :rank] @ torch.diag(S[:rank]), Vh[:rank, :]  # (d_out, k), (k, d_in)
    if clamp is not None:
        hi = torch.quantile(torch.cat([B.flatten(), A.flatten()]), clamp)
        B, A = B.clamp(-hi, hi), A.clamp(-hi, hi)
    return Factors(A=A, B=B)


def nominal_rank(adapter: Adapter) -> int:
    """The rank PEFT sees: the config's, or the largest module rank when that is larger
    (PEFT: ``max(r, *rank_pattern.values())``)."""
    return max(adapter.config.rank, *(f.rank for f in adapter.factors.values()))


def _check(adapters: Sequence[Adapter], combination_type: str, density, sign_method, generator,
           svd_rank, svd_clamp, svd_full_matrices) -> None:
    if combination_type not in COMBINATION_TYPES:
        raise ValueError(f"combination_type={combination_type!r}: must be one of {', '.join(COMBINATION_TYPES)}")
    pruning, elect = RULES.get(_rule(combination_type), (None, False))
    svd = combination_type in SVD_TYPES
    unused = [f"{name}={value!r}" for name, value, used in [
        ("density", density, pruning is not None), ("generator", generator, pruning == "random"),
        ("majority_sign_method", None if sign_method == "total" else sign_method, elect),
        ("svd_rank", svd_rank, svd), ("svd_clamp", svd_clamp, svd),
        ("svd_full_matrices", None if svd_full_matrices else False, svd)] if value is not None and not used]
    if unused:
        raise ValueError(f"{', '.join(unused)}: not used by combination_type {combination_type!r}; leave it unset")
    magnitude = pruning == "magnitude"  # dare divides by density, so it needs density > 0
    in_range = density is not None and (density >= 0.0 if magnitude else density > 0.0) and density <= 1.0
    if pruning is not None and not in_range:
        raise ValueError(f"density={density!r}: {combination_type} needs the share of entries kept, in "
                         f"{'[0, 1]' if magnitude else '(0, 1]'}")
    if pruning == "random" and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator={generator!r}: {combination_type} draws its masks from a torch.Generator; "
                         "pass one")
    if sign_method not in SIGN_METHODS:
        raise ValueError(f"majority_sign_method={sign_method!r}: must be one of {', '.join(SIGN_METHODS)}")
    if svd_rank is not None and not (isinstance(svd_rank, int) and svd_rank >= 1):
        raise ValueError(f"svd_rank={svd_rank!r}: must be None (the largest input rank) or an integer >= 1")
    if svd_clamp is not None and not 0.0 <= svd_clamp <= 1.0:
        raise ValueError(f"svd_clamp={svd_clamp!r}: must be None or a quantile in [0, 1]")
    first = adapters[0].config.layers if adapters else None
    if first is not None and any(a.config.layers is None or not set(a.config.layers) <= set(first) for a in adapters):
        raise ValueError(f"the first adapter covers layers {list(first)} only and another adapter reaches beyond "
                         "them: PEFT's merged adapter inherits the first one's layers and drops the rest; "
                         "put an adapter that covers every layer first")


def _merge_module(path: str, kind: str, fs: Sequence[Factors], ws: Sequence[float], new_rank: int,
                  density, sign_method, generator, svd_clamp, svd_full_matrices) -> Factors:
    """One module of :func:`peft_merge`, before PEFT's merged-adapter scale."""
    if kind == "linear":
        return merge.factor_average(fs, ws)
    if kind == "cat":
        return merge.cat(fs, ws)
    options = dict(density=density, sign_method=sign_method, generator=generator)
    if kind in FACTOR_TYPES:
        if len({f.rank for f in fs}) > 1:
            raise ValueError(f"module {path}: ranks {[f.rank for f in fs]} differ; combination_type {kind!r} "
                             "needs equal ranks: use peft_cat or peft_svd")
        a, b = merge.balanced_coefficients(fs, ws)
        A = combine([f.A for f in fs], a, kind, **options)  # A's masks are drawn before B's, as in PEFT
        return Factors(A=A, B=combine([f.B for f in fs], b, kind, **options))
    d_out, d_in = fs[0].B.shape[0], fs[0].A.shape[1]
    if not new_rank <= min(d_out, d_in):
        raise ValueError(f"svd_rank={new_rank}: must be in [1, {min(d_out, d_in)}] for module {path}")
    # (B @ A) * s: PEFT's get_delta_weight order, so the SVD sees the same floats
    delta = combine([(f.B @ f.A) * f.scale for f in fs], ws, _rule(kind), **options)
    return svd_factors(delta, new_rank, svd_clamp, svd_full_matrices)


def peft_merge(adapters: Sequence[Adapter], weights: Sequence[float] | None = None, combination_type: str = "svd",
               svd_rank: int | None = None, svd_clamp: float | None = None, svd_full_matrices: bool = True,
               density: float | None = None, majority_sign_method: str = "total",
               generator: torch.Generator | None = None) -> Adapter:
    """The adapter that ``PeftModel.add_weighted_adapter(adapters, weights, name,
    combination_type, ...)`` creates (the module docstring has the math, the quirks kept and
    the departures); per module, with only the adapters that have it."""
    _check(adapters, combination_type, density, majority_sign_method, generator, svd_rank, svd_clamp,
           svd_full_matrices)
    w = merge._check_weights(len(adapters), weights)
    ranks = [nominal_rank(a) for a in adapters]
    kind = "linear" if len(adapters) == 1 else combination_type  # PEFT: one adapter is always linear
    if kind in FACTOR_TYPES and len(set(ranks)) != 1:
        raise ValueError(f"combination_type {kind!r} needs every adapter to have the same rank, got {ranks}: "
                         "use peft_cat or peft_svd (or our cat / svd)")
    new_rank = sum(ranks) if kind == "cat" else (svd_rank or max(ranks)) if kind in SVD_TYPES else ranks[0]
    target_scale = math.sqrt(new_rank) if adapters[0].config.rslora else 1.0  # PEFT's rsLoRA quirk
    factors = {}
    for path in dict.fromkeys(p for a in adapters for p in a.paths):
        ws, fs = zip(*[(wi, a.factors[path]) for wi, a in zip(w, adapters) if path in a.factors])
        merged = _merge_module(path, kind, fs, ws, new_rank, density, majority_sign_method, generator, svd_clamp,
                               svd_full_matrices)
        factors[path] = Factors(A=merged.A, B=target_scale * merged.scale * merged.B)
    return merged_adapter(adapters, factors)


MERGES: dict[str, Callable[..., Adapter]] = {
    f"peft_{t}": functools.partial(peft_merge, combination_type=t) for t in COMBINATION_TYPES}
