"""Read PEFT LoRA adapter folders (any HF model) and measure them, alone and in pairs.

Reading uses ``adapter_config.json`` and ``adapter_model.safetensors`` only (safetensors,
never unpickling) and needs no base model. Per module ``delta = scale * B @ A``
(``theory/__init__.py``); ``scale = lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``),
with PEFT's ``alpha_pattern`` matched the way PEFT matches it.

Measures per adapter and module: rank, singular values of delta, entropy effective rank
``exp(H(sigma / sum sigma))`` (Roy & Vetterli 2007), Frobenius and spectral norms. Per pair
on their common modules: cosine of the deltas (Frobenius inner product), principal angles
between their column spaces (outputs) and row spaces (inputs), |cos| of their Arrow
prototypes (``theory.routing.arrow_prototype``: what Arrow routing tells apart). Over all
adapters per module: the TIES sign-conflict rate (``theory.merge.trim_top_k``) and the
relative size of factor-space cross terms (``theory.merge.cross_terms``, MERGE-3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.errors import UsageError
from theory.merge import Factors, cross_terms, trim_top_k, weighted_delta_sum
from theory.routing import arrow_prototype_lowrank
from toymodels.peft_checkpoint import read_peft_checkpoint
from toymodels.lora import linear_weight
from toymodels.validate import NonFiniteError


@dataclass(frozen=True)
class PeftAdapter:
    name: str
    path: Path
    meta: dict
    factors: dict[str, Factors]  # module path (prefix stripped) -> factors


def read_adapter(directory: str | Path, check_finite: bool = True) -> PeftAdapter:
    """One adapter folder as float32 factors (:func:`toymodels.peft_checkpoint.read_peft_checkpoint`);
    every problem is a one-line :class:`UsageError`. ``check_finite=False`` reads NaN/Inf
    weights (``--allow-nonfinite``); the measures of such a module are NaN."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such adapter folder")
    try:
        meta, factors = read_peft_checkpoint(directory, check_finite)
    except NonFiniteError as exc:
        raise UsageError(f"{exc} (or inspect it anyway with --allow-nonfinite)") from None
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    factors = {path: Factors(A=f.A.float(), B=f.B.float(), scale=f.scale) for path, f in factors.items()}
    return PeftAdapter(directory.name or str(directory), directory, meta, factors)


def _root(path: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``model.layers.#``: names the architecture."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i] + ["#"])
    return ".".join(parts[:-1])


def check_compatible(adapters: list[PeftAdapter]) -> None:
    """Same architecture (module names) and, on shared modules, the same weight shape."""
    first = adapters[0]
    roots = {_root(p) for p in first.factors}
    for other in adapters[1:]:
        if not {_root(p) for p in other.factors} & roots:
            raise UsageError(f"{other.path}: module names ({sorted({_root(p) for p in other.factors})[0]}...) "
                             f"differ from {first.path} ({sorted(roots)[0]}...): adapters of another architecture")
        for path in other.factors.keys() & first.factors.keys():
            a, b = first.factors[path], other.factors[path]
            if (a.B.shape[0], a.A.shape[1]) != (b.B.shape[0], b.A.shape[1]):
                raise UsageError(f"{other.path}: module {path} is (d_out, d_in)={b.B.shape[0], b.A.shape[1]}, "
                                 f"but {a.B.shape[0], a.A.shape[1]} in {first.path}: shapes do not fit")


def spectrum(f: Factors) -> torch.Tensor:
    """Singular values of ``f.delta`` from the factors: with ``B = Q_B R_B``,
    ``A.T = Q_A R_A``, ``delta = scale Q_B (R_B R_A.T) Q_A.T``, so they are those of the
    small ``(r, r)`` core."""
    _, RB = torch.linalg.qr(f.B.double())
    _, RA = torch.linalg.qr(f.A.double().T)
    return torch.linalg.svdvals(f.scale * RB @ RA.T).float()


def effective_rank(sigma: torch.Tensor) -> float:
    p = sigma / sigma.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum())) if p.numel() else 0.0


def column_basis(M: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis of the column space of ``M`` (numerical rank)."""
    U, S, _ = torch.linalg.svd(M.double(), full_matrices=False)
    return U[:, : int((S > rtol * S[0]).sum())] if S.numel() and S[0] > 0 else U[:, :0]


def principal_cosines(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the column spaces of X and Y, descending."""
    return torch.linalg.svdvals(column_basis(X).T @ column_basis(Y)).clamp(max=1.0).float()


def delta_cosine(f: Factors, g: Factors) -> float:
    """``<delta_f, delta_g>_F / (|delta_f| |delta_g|)`` from the factors (no dense delta)."""
    inner = f.scale * g.scale * ((f.B.T @ g.B) * (f.A @ g.A.T)).sum()
    norms = spectrum(f).norm() * spectrum(g).norm()
    return float(inner / norms) if norms > 0 else float("nan")


def _finite(*fs: Factors) -> bool:
    """False when a factor holds NaN/Inf (read with ``--allow-nonfinite``): its measures are NaN."""
    return all(bool(torch.isfinite(f.A).all() and torch.isfinite(f.B).all()) for f in fs)


def module_stats(f: Factors) -> dict:
    if not _finite(f):
        return {"rank": f.rank, "sigma": [math.nan] * f.rank, "effective_rank": math.nan,
                "numerical_rank": None, "fro": math.nan, "spectral": math.nan}
    s = spectrum(f)
    return {"rank": f.rank, "sigma": s.tolist(), "effective_rank": effective_rank(s),
            "numerical_rank": int((s > 1e-6 * s[0]).sum()) if s.numel() and s[0] > 0 else 0,
            "fro": float(s.norm()), "spectral": float(s[0]) if s.numel() else 0.0}


def pair_stats(f: Factors, g: Factors) -> dict:
    if not _finite(f, g):
        return dict.fromkeys(("cosine", "col_overlap", "row_overlap", "min_angle_deg", "arrow_abs_cos"), math.nan)
    col = principal_cosines(f.B, g.B)  # output spaces (delta's columns lie in span B)
    row = principal_cosines(f.A.T, g.A.T)  # input spaces
    # from the factors (an r x r SVD; the dense d_out x d_in one was ~99% of inspecting SmolLM2's experts)
    proto = float((arrow_prototype_lowrank(f.scale * f.B.double(), f.A.double())
                   @ arrow_prototype_lowrank(g.scale * g.B.double(), g.A.double())).abs())
    return {"cosine": delta_cosine(f, g), "col_overlap": float(col.square().mean()) if col.numel() else 0.0,
            "row_overlap": float(row.square().mean()) if row.numel() else 0.0,
            "min_angle_deg": math.degrees(math.acos(float(col.max()))) if col.numel() else 90.0,
            "arrow_abs_cos": proto}


def group_stats(fs: list[Factors], density: float) -> dict:
    """TIES sign conflicts: among entries kept (top ``density``) by 2+ adapters, the share
    whose kept signs disagree. Cross terms: ``|cross_terms| / |uniform delta average|``."""
    if not _finite(*fs):
        return {"ties_conflict": math.nan, "ties_contested": None, "cross_rel": math.nan}
    trimmed = torch.stack([trim_top_k(f.delta, density) for f in fs])  # (n, d_out, d_in)
    kept = (trimmed != 0).sum(0)
    pos, neg = (trimmed > 0).sum(0), (trimmed < 0).sum(0)
    contested = kept >= 2
    conflict = float(((pos > 0) & (neg > 0) & contested).sum() / contested.sum()) if contested.any() else float("nan")
    same_rank = len({f.rank for f in fs}) == 1
    avg = weighted_delta_sum(fs).norm()
    cross = float(cross_terms(fs).norm() / avg) if same_rank and avg > 0 else float("nan")
    return {"ties_conflict": conflict, "ties_contested": int(contested.sum()), "cross_rel": cross}


def inspect(adapters: list[PeftAdapter], density: float = 0.2) -> dict:
    """Every measure above, JSON-able: ``modules[name][path]``, ``pairs["i|j"][path]``,
    ``groups[path]`` (modules that all adapters share), plus per-adapter and per-pair means."""
    check_compatible(adapters)
    modules = {a.name: {p: module_stats(f) for p, f in a.factors.items()} for a in adapters}
    pairs, groups = {}, {}
    for i, a in enumerate(adapters):
        for b in adapters[i + 1:]:
            pairs[f"{a.name}|{b.name}"] = pair_modules(a, b)
    if len(adapters) > 1:
        shared = [p for p in adapters[0].factors if all(p in a.factors for a in adapters)]
        groups = {p: group_stats([a.factors[p] for a in adapters], density) for p in shared}
    mean = lambda rows, key: _nanmean([r[key] for r in rows.values()])  # noqa: E731
    summary = {
        "adapters": {a.name: {"path": str(a.path), "modules": len(a.factors),
                              "rank": sorted({m["rank"] for m in modules[a.name].values()}),
                              **{k: mean(modules[a.name], k) for k in ("effective_rank", "fro", "spectral")}}
                     for a in adapters},
        "pairs": {k: pair_summary(v) for k, v in pairs.items()},
        "groups": {s: mean(groups, s) for s in ("ties_conflict", "cross_rel")} if groups else {},
    }
    return {"summary": summary, "modules": modules, "pairs": pairs, "groups": groups, "ties_density": density}


def pair_modules(a: PeftAdapter, b: PeftAdapter) -> dict[str, dict]:
    """:func:`pair_stats` of two adapters on each module they share (``a``'s order)."""
    return {p: pair_stats(a.factors[p], b.factors[p]) for p in a.factors if p in b.factors}


def pair_summary(per_module: dict[str, dict]) -> dict:
    """The mean of each pair measure over the modules of :func:`pair_modules`."""
    if not per_module:
        return {"modules": 0}
    return {"modules": len(per_module), **{s: _nanmean([r[s] for r in per_module.values()])
                                           for s in ("cosine", "col_overlap", "row_overlap", "arrow_abs_cos")}}


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def check_base(adapters: list[PeftAdapter], model: torch.nn.Module) -> None:
    """Every adapted module exists in ``model`` as a linear map of the adapter's shape."""
    named = dict(model.named_modules())
    for a in adapters:
        for path, f in a.factors.items():
            module = named.get(path)
            if module is None or not hasattr(module, "weight"):
                raise UsageError(f"{a.path}: module {path} is not in the base model "
                                 f"({type(model).__name__}): an adapter of another architecture")
            if tuple(linear_weight(module).shape) != (f.B.shape[0], f.A.shape[1]):
                raise UsageError(f"{a.path}: module {path} is (d_out, d_in)={f.B.shape[0], f.A.shape[1]} "
                                 f"but the base weight is {tuple(linear_weight(module).shape)}: shapes do not fit")
