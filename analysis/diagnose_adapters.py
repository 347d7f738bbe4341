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
edit alike, broadcast; > 0: it reaches its own bridge's), read against the expert gap, the same
gap for the expert prompts themselves (the positive control: what a composed key equal to its
bridge's expert key would get). Beside it, the share of each key's
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
from dataclasses import dataclass
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
from toymodels.progress import Bar, Progress, open_bar

PAIRS_FILE = "prompt_pairs.json"  # written next to the saved experts by pretrained_two_hop
BATCH = 16  # prompts per forward pass


@dataclass(frozen=True)
class PromptPairs:
    """A prompt-pairs file: the expert to diagnose (None: not named), the pairs, and control
    prompts the expert should not act on (may be empty)."""

    adapter: str | None
    pairs: list[dict]
    controls: list[str]


def read_pairs(path: str | Path) -> PromptPairs:
    """A JSON file ``{"adapter": "BC", "pairs": [{"group", "prompt", "expert_prompt"}, ...],
    "controls": [prompt, ...]}`` (``adapter`` and ``controls`` optional; a bare list of pairs
    is accepted too); every problem is a one-line :class:`UsageError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such prompt-pairs file (give one with --pairs FILE)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not JSON ({exc}): a prompt-pairs file is JSON, see `lora-limits diagnose --help`") \
            from None
    data = data if isinstance(data, dict) else {"pairs": data}
    pairs, controls = data.get("pairs"), data.get("controls", [])
    if not isinstance(pairs, list) or not pairs:
        raise UsageError(f"{path}: no pairs: need a non-empty list under \"pairs\"")
    for i, p in enumerate(pairs):
        if not isinstance(p, dict) or not all(isinstance(p.get(k), str) and p.get(k) for k in
                                              ("group", "prompt", "expert_prompt")):
            raise UsageError(f"{path}: pair {i} needs non-empty strings \"group\", \"prompt\" and \"expert_prompt\"")
    if not isinstance(controls, list) or not all(isinstance(c, str) and c for c in controls):
        raise UsageError(f"{path}: \"controls\" must be a list of non-empty prompts")
    return PromptPairs(data.get("adapter"), pairs, controls)


def prompt_keys(model: nn.Module, tokenizer, prompts: list[str], paths: list[str], bar: Bar | None = None
                ) -> dict[str, Tensor]:
    """``path -> (len(prompts), d_in)`` float64: the input of each module at each prompt's last
    token (prompts tokenised without special tokens, as the protocol's; right-padded, which a
    causal model's earlier positions do not see). ``bar`` advances once per prompt."""
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
        if bar is not None:
            bar.update(len(chunk))
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
    the distinct expert prompts in first-seen order. Returns ``{"modules", "groups": {group:
    {"pairs", "bridges", "paired", "unpaired", "gap": {mean, low, high, ...}, "expert_gap",
    "expert_gap_ci", "control_passes", "relative", "share_prompt", "share_expert",
    "share_chance"}}, "layers": {group: [{"layer", "paired", "unpaired", "gap", "expert_gap"}]},
    "per_pair": [...]}``. The gap's interval is a percentile bootstrap over the group's pairs
    (``seed``). ``expert_gap``, the positive control: the same gap for the expert prompts
    themselves (1 - their mean coefficient on the group's other bridges' expert prompts), what
    a composed key equal to its bridge's expert key would get, with a bootstrap interval over
    the group's bridges; ``control_passes`` when that interval lies above 0 (the instrument
    tells the expert's own prompts apart); ``relative`` = gap / expert_gap there, NaN where
    the control fails (the gap then cannot be read)."""
    experts = list(dict.fromkeys(p["expert_prompt"] for p in pairs))
    own = torch.tensor([experts.index(p["expert_prompt"]) for p in pairs])  # (n,)
    groups = list(dict.fromkeys(p["group"] for p in pairs))
    rows = {g: [i for i, p in enumerate(pairs) if p["group"] == g] for g in groups}
    bridges = {g: sorted({own[i].item() for i in rows[g]}) for g in groups}
    control = torch.zeros(len(pairs), len(experts), dtype=torch.bool)  # pair i: the group's other bridges
    for g in groups:
        for i in rows[g]:
            control[i, [j for j in bridges[g] if j != own[i].item()]] = True
    paths = sorted(adapter.factors, key=lambda p: (_layer(p), p))
    paired, unpaired, share_p = (torch.empty(len(paths), len(pairs), dtype=torch.float64) for _ in range(3))
    share_e = torch.empty(len(paths), len(experts), dtype=torch.float64)
    expert_gap = {g: torch.empty(len(paths), len(bridges[g]), dtype=torch.float64) for g in groups}
    for m, path in enumerate(paths):
        f = adapter.factors[path]
        coef = coefficients(f, keys[path], expert_keys[path])  # (n, m_experts)
        paired[m] = coef[torch.arange(len(pairs)), own]
        unpaired[m] = _row_means(coef, control)
        own_coef = coefficients(f, expert_keys[path], expert_keys[path])  # (m_experts, m_experts)
        for g in groups:
            b = torch.tensor(bridges[g])
            square = own_coef[b][:, b]  # (bridges, bridges)
            off = ~torch.eye(len(b), dtype=torch.bool)
            expert_gap[g][m] = square.diagonal() - _row_means(square, off)  # (bridges,)
        share_p[m], share_e[m] = subspace_share(f, keys[path]), subspace_share(f, expert_keys[path])
    chance = float(np.mean([adapter.factors[p].rank / adapter.factors[p].A.shape[1] for p in paths]))
    pair_paired = [_finite_mean(paired[:, i]) for i in range(len(pairs))]  # over modules
    pair_unpaired = [_finite_mean(unpaired[:, i]) for i in range(len(pairs))]
    rng = np.random.default_rng(seed)
    out: dict = {"modules": len(paths), "groups": {}, "layers": {}}
    for g in groups:
        gaps = [x for i in rows[g] if math.isfinite(x := pair_paired[i] - pair_unpaired[i])]
        gap = bootstrap_interval(gaps, rng, UNBOUNDED).as_json() if gaps else None
        e_gaps = [x for j in range(len(bridges[g])) if math.isfinite(x := _finite_mean(expert_gap[g][:, j]))]
        e_ci = bootstrap_interval(e_gaps, rng, UNBOUNDED).as_json() if e_gaps else None
        e_gap = e_ci["mean"] if e_ci else math.nan
        # the ratio means something only where the expert's own prompts are told apart
        seen = e_ci is not None and e_ci["low"] > 0
        out["groups"][g] = {
            "pairs": len(rows[g]), "bridges": len(bridges[g]),
            "paired": _finite_mean(torch.tensor([pair_paired[i] for i in rows[g]])),
            "unpaired": _finite_mean(torch.tensor([pair_unpaired[i] for i in rows[g]])),
            "gap": gap, "expert_gap": e_gap, "expert_gap_ci": e_ci, "control_passes": seen,
            "relative": gap["mean"] / e_gap if gap and seen else math.nan,
            "share_prompt": float(share_p[:, rows[g]].mean()), "share_expert": float(share_e[:, bridges[g]].mean()),
            "share_chance": chance}
        layers = []
        for layer in dict.fromkeys(_layer(p) for p in paths):
            ms = [m for m, p in enumerate(paths) if _layer(p) == layer]
            at = {"paired": _finite_mean(paired[ms][:, rows[g]]), "unpaired": _finite_mean(unpaired[ms][:, rows[g]])}
            layers.append({"layer": layer, **at, "gap": at["paired"] - at["unpaired"],
                           "expert_gap": _finite_mean(expert_gap[g][ms, :])})
        out["layers"][g] = layers
    out["per_pair"] = [{**{k: p[k] for k in ("group", "prompt", "expert_prompt")},
                        "paired": pair_paired[i], "unpaired": pair_unpaired[i]}
                       for i, p in enumerate(pairs)]
    return out


def _row_means(values: Tensor, mask: Tensor) -> Tensor:
    """``(n,)``: the mean of each row's masked entries; NaN for a row with none."""
    count = mask.sum(1)
    means = torch.where(mask, values, 0.0).sum(1) / count.clamp_min(1)
    return torch.where(count > 0, means, torch.nan)


def _finite_mean(x: Tensor) -> float:
    """Mean of the finite entries of ``x`` (NaN: a control that does not exist); NaN if none."""
    kept = x[torch.isfinite(x)]
    return float(kept.mean()) if kept.numel() else math.nan


def diagnose(model: nn.Module, tokenizer, adapter: PeftAdapter, prompts: PromptPairs, seed: int = 0,
             progress: Progress | None = None) -> dict:
    """Read the keys from ``model`` (the base, or :func:`with_adapters` of it) and measure;
    with control prompts also ``share_control``, their keys' mean share in the adapter's input
    subspace (PAPER.md: composed prompts should overlap it more than control prompts do).
    ``progress`` (toymodels/progress.py) gets one bar over every prompt read."""
    paths = sorted(adapter.factors)
    pairs = prompts.pairs
    experts = list(dict.fromkeys(p["expert_prompt"] for p in pairs))
    bar = open_bar(progress, "reading keys", len(pairs) + len(experts) + len(prompts.controls))
    keys = prompt_keys(model, tokenizer, [p["prompt"] for p in pairs], paths, bar)
    expert_keys = prompt_keys(model, tokenizer, experts, paths, bar)
    control_keys = prompt_keys(model, tokenizer, prompts.controls, paths, bar) if prompts.controls else {}
    bar.close()
    report = readiness(adapter, keys, expert_keys, pairs, seed)
    report["share_control"] = math.nan
    if prompts.controls:
        report["share_control"] = float(torch.stack([subspace_share(adapter.factors[p], control_keys[p])
                                                     for p in paths]).mean())
    report["controls"] = len(prompts.controls)
    return report
