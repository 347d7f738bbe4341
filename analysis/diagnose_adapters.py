"""The readiness score of ``lora-limits diagnose`` (PAPER.md, "A mechanism that predicts reuse").

T2 names the mechanism: a merged or routed model answers a composed question with the second
expert's edit only if, where that expert acts, the question's representation overlaps the
expert's input subspace more than control prompts do. Measured here from a base model, one
PEFT LoRA adapter and unlabelled prompt pairs: each pair is a composed ``prompt`` and the
``expert_prompt`` the expert was trained on for that prompt's bridge (e.g. "The capital of
the country where the city of A is located is" with "The capital of B is"), in a ``group``
of pairs that share a relation; the pairs' other bridges in the group are the controls.

At every adapted module (``delta = scale * B @ A``, input keys read at each prompt's last
token by a forward hook) the T2 coefficient of expert prompt ``e`` on prompt ``k``
generalises P1's ``<v2, v'>/||v2||^2`` to any rank::

    coef(k, e) = <delta k, delta e> / ||delta e||^2

(for a rank-one P1 edit ``delta = d v2^T / ||v2||^2`` it is exactly ``<v2, k>/||v2||^2``;
``coef(e, e) = 1``). Per pair: ``paired`` = coef with its own bridge's expert prompt,
``unpaired`` = mean coef with the group's other bridges' expert prompts, each averaged over
modules; ``gap = paired - unpaired`` is the readiness (0: the question reaches every bridge's
edit alike, broadcast; > 0: it reaches its own bridge's). Beside it, the share of each key's
energy inside the adapter's input subspace (the span of A's rows), against ``r / d_in``, the
share of a random direction.

A candidate score only: it counts once validated against measured reuse outcomes on
held-out seeds and task families, and once it beats the mechanism-free baselines (delta
cosine, principal angles, norms: ``lora-limits inspect``). Nothing here claims that yet.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from analysis.errors import UsageError
from analysis.inspect_adapters import PeftAdapter, column_basis
from analysis.stats import UNBOUNDED, bootstrap_interval
from theory.merge import Factors
from toymodels.lora import linear_weight
from toymodels.peft_checkpoint import layer_of
from toymodels.probes.capture import map_inputs

PAIRS_FILE = "prompt_pairs.json"  # written next to the saved experts by pretrained_two_hop
BATCH = 16  # prompts per forward pass


def read_pairs(path: str | Path) -> tuple[str | None, list[dict]]:
    """``(adapter name or None, pairs)`` from a JSON file ``{"adapter": "BC", "pairs": [{"group",
    "prompt", "expert_prompt"}, ...]}`` (a bare list of pairs is accepted too); every problem
    is a one-line :class:`UsageError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such prompt-pairs file (give one with --pairs FILE)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not JSON ({exc}): a prompt-pairs file is JSON, see `lora-limits diagnose --help`") \
            from None
    name, pairs = (data.get("adapter"), data.get("pairs")) if isinstance(data, dict) else (None, data)
    if not isinstance(pairs, list) or not pairs:
        raise UsageError(f"{path}: no pairs: need a non-empty list under \"pairs\"")
    for i, p in enumerate(pairs):
        if not isinstance(p, dict) or not all(isinstance(p.get(k), str) and p.get(k) for k in
                                              ("group", "prompt", "expert_prompt")):
            raise UsageError(f"{path}: pair {i} needs non-empty strings \"group\", \"prompt\" and \"expert_prompt\"")
    return name, pairs


def prompt_keys(model: nn.Module, tokenizer, prompts: list[str], paths: list[str]) -> dict[str, Tensor]:
    """``path -> (len(prompts), d_in)`` float64: the input of each module at each prompt's last
    token (prompts tokenised without special tokens, as the protocol's; right-padded, which a
    causal model's earlier positions do not see)."""
    rows = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    if empty := [p for p, r in zip(prompts, rows) if not r]:
        raise UsageError(f"prompt {empty[0]!r} has no tokens: every prompt needs text")
    out: dict[str, list[Tensor]] = {path: [] for path in paths}
    device = next(model.parameters()).device
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        idx = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
        for i, r in enumerate(chunk):
            idx[i, :len(r)] = torch.tensor(r)
        last = torch.tensor([len(r) - 1 for r in chunk])
        for path, keys in map_inputs(model, idx.to(device), last.to(device), paths).items():
            out[path].append(keys.double().cpu())
    return {path: torch.cat(keys) for path, keys in out.items()}


def with_adapters(base: nn.Module, adapters: list[PeftAdapter]) -> nn.Module:
    """A copy of ``base`` with every adapter's delta added to its weights (keys read "after"
    them, e.g. after the first-hop expert); ``base`` is left unchanged."""
    model = copy.deepcopy(base)
    with torch.no_grad():
        for adapter in adapters:
            for path, f in adapter.factors.items():
                weight = linear_weight(model.get_submodule(path))
                weight.add_(f.delta.to(weight.dtype).to(weight.device))
    return model


def coefficients(f: Factors, keys: Tensor, expert_keys: Tensor) -> Tensor:
    """``(n, m)``: ``<delta k_i, delta e_j> / ||delta e_j||^2`` (NaN where ``delta e_j = 0``),
    from the factors (``delta k = scale B (A k)``)."""
    A, B = f.A.double(), f.B.double()
    out, expert_out = f.scale * (keys @ A.T) @ B.T, f.scale * (expert_keys @ A.T) @ B.T  # (n, d_out), (m, d_out)
    norm2 = expert_out.square().sum(-1)  # (m,)
    return (out @ expert_out.T) / torch.where(norm2 > 0, norm2, torch.nan)[None, :]


def subspace_share(f: Factors, keys: Tensor) -> Tensor:
    """``(n,)``: ``||P k||^2 / ||k||^2``, ``P`` the projection on the span of A's rows."""
    V = column_basis(f.A.T)  # (d_in, r')
    return (keys @ V).square().sum(-1) / keys.square().sum(-1)


def _layer(path: str) -> int:
    found = layer_of(path)
    return found[1] if found else -1


def readiness(adapter: PeftAdapter, keys: dict[str, Tensor], expert_keys: dict[str, Tensor],
              pairs: list[dict], seed: int = 0) -> dict:
    """The readiness of ``adapter`` on ``pairs`` (see the module docstring). ``keys[path]``:
    ``(n_pairs, d_in)`` keys of the composed prompts; ``expert_keys[path]``: ``(m, d_in)`` of
    the distinct expert prompts in first-seen order. Returns ``{"groups": {group: {"pairs",
    "bridges", "paired", "unpaired", "gap": {mean, low, high, ...}, "share_prompt",
    "share_expert", "share_chance"}}, "layers": {group: [{"layer", "paired", "unpaired"}]},
    "per_pair": [...]}``; the gap's interval is a percentile bootstrap over the group's pairs
    (``seed``)."""
    experts = list(dict.fromkeys(p["expert_prompt"] for p in pairs))
    own = torch.tensor([experts.index(p["expert_prompt"]) for p in pairs])  # (n,)
    groups = list(dict.fromkeys(p["group"] for p in pairs))
    # the controls of pair i: expert prompts of other bridges in its group
    in_group = {g: {own[i].item() for i, p in enumerate(pairs) if p["group"] == g} for g in groups}
    control = torch.zeros(len(pairs), len(experts), dtype=torch.bool)
    for i, p in enumerate(pairs):
        control[i, sorted(in_group[p["group"]] - {own[i].item()})] = True
    paths = sorted(adapter.factors, key=lambda p: (_layer(p), p))
    paired, unpaired, share_p = (torch.empty(len(paths), len(pairs), dtype=torch.float64) for _ in range(3))
    share_e = torch.empty(len(paths), len(experts), dtype=torch.float64)
    for m, path in enumerate(paths):
        f = adapter.factors[path]
        coef = coefficients(f, keys[path], expert_keys[path])  # (n, m_experts)
        paired[m] = coef[torch.arange(len(pairs)), own]
        unpaired[m] = torch.where(control, coef, 0.0).sum(1) / control.sum(1).clamp_min(1)
        unpaired[m][control.sum(1) == 0] = torch.nan
        share_p[m], share_e[m] = subspace_share(f, keys[path]), subspace_share(f, expert_keys[path])
    chance = float(np.mean([adapter.factors[p].rank / adapter.factors[p].A.shape[1] for p in paths]))
    pair_paired = [_finite_mean(paired[:, i]) for i in range(len(pairs))]  # over modules
    pair_unpaired = [_finite_mean(unpaired[:, i]) for i in range(len(pairs))]
    rng = np.random.default_rng(seed)
    out: dict = {"modules": len(paths), "groups": {}, "layers": {}, "per_pair": []}
    for g in groups:
        rows = [i for i, p in enumerate(pairs) if p["group"] == g]
        gaps = [pair_paired[i] - pair_unpaired[i] for i in rows]
        gaps = [x for x in gaps if math.isfinite(x)]
        e_rows = sorted({own[i].item() for i in rows})
        out["groups"][g] = {
            "pairs": len(rows), "bridges": len(e_rows),
            "paired": _finite_mean(torch.tensor([pair_paired[i] for i in rows])),
            "unpaired": _finite_mean(torch.tensor([pair_unpaired[i] for i in rows])),
            "gap": bootstrap_interval(gaps, rng, UNBOUNDED).as_json() if gaps else None,
            "share_prompt": float(share_p[:, rows].mean()), "share_expert": float(share_e[:, e_rows].mean()),
            "share_chance": chance}
        layers = []
        for layer in dict.fromkeys(_layer(p) for p in paths):
            ms = [m for m, p in enumerate(paths) if _layer(p) == layer]
            layers.append({"layer": layer, "paired": _finite_mean(paired[ms][:, rows]),
                           "unpaired": _finite_mean(unpaired[ms][:, rows])})
        out["layers"][g] = layers
    out["per_pair"] = [{**{k: p[k] for k in ("group", "prompt", "expert_prompt")},
                        "paired": pair_paired[i], "unpaired": pair_unpaired[i]}
                       for i, p in enumerate(pairs)]
    return out


def _finite_mean(x: Tensor) -> float:
    """Mean of the finite entries of ``x`` (NaN: a control that does not exist); NaN if none."""
    kept = x[torch.isfinite(x)]
    return float(kept.mean()) if kept.numel() else math.nan


def diagnose(model: nn.Module, tokenizer, adapter: PeftAdapter, pairs: list[dict], seed: int = 0) -> dict:
    """Read the keys from ``model`` (the base, or :func:`with_adapters` of it) and measure."""
    paths = sorted(adapter.factors)
    experts = list(dict.fromkeys(p["expert_prompt"] for p in pairs))
    keys = prompt_keys(model, tokenizer, [p["prompt"] for p in pairs], paths)
    expert_keys = prompt_keys(model, tokenizer, experts, paths)
    return readiness(adapter, keys, expert_keys, pairs, seed)
