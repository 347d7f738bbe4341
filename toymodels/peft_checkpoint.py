"""Adapters on disk as PEFT LoRA checkpoints (``adapter_model.safetensors`` +
``adapter_config.json``), loadable with ``peft.PeftModel.from_pretrained(base, folder)``.

- :func:`save_adapter` writes an :class:`~toymodels.adapters.Adapter`; per-module ranks and
  scales that differ from its config go to PEFT's ``rank_pattern``/``alpha_pattern``, and
  the adapted paths to ``target_modules`` (+ ``layers_to_transform``) as PEFT matches them;
- :func:`read_peft_checkpoint` reads any PEFT LoRA folder without a model (safetensors only,
  every input checked first by :mod:`toymodels.validate`);
- :func:`load_adapter` reads one written for a given base model and role map.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from theory.merge import Factors
from toymodels.adapters import Adapter, base_linear, check_shapes
from toymodels.entity_rows import ROWS_NAME, load_rows, save_rows
from toymodels.lora import INITS, LoRAConfig, RoleMap, is_fan_in_fan_out
from toymodels.validate import NEVER_UNPICKLE, check_adapter_config, convert_hint, lora_pairs, pattern_matches
from toymodels.validate import check_finite as require_finite
from toymodels.validate import read_json_object, safetensors_header

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
# PEFT saves ``base_model.model.<module path>`` for every task type, our GPT included:
# ``PeftModel.base_model`` is the LoRA tuner, whose ``.model`` is the base model.
PEFT_PREFIX = "base_model.model."
PEFT_TASK_TYPES = (None, "CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS",
                   "FEATURE_EXTRACTION")

def _alpha(f: Factors, rslora: bool) -> float:
    """PEFT's lora_alpha giving this module's scale: ``scale = alpha / r`` (or ``/ sqrt(r)``)."""
    return f.scale * (math.sqrt(f.rank) if rslora else f.rank)


def peft_state_dict(adapter: Adapter) -> dict[str, torch.Tensor]:
    """``base_model.model.<path>.lora_A.weight`` (r, d_in) and ``...lora_B.weight`` (d_out, r)."""
    out = {}
    for path, f in adapter.factors.items():
        out[f"{PEFT_PREFIX}{path}.lora_A.weight"] = f.A.detach().cpu().contiguous()
        out[f"{PEFT_PREFIX}{path}.lora_B.weight"] = f.B.detach().cpu().contiguous()
    return out


def peft_task_type(model: nn.Module) -> str | None:
    """The ``task_type`` to save for adapters of ``model``: ``CAUSAL_LM`` for a Hugging Face
    causal LM (PEFT then wraps it as ``PeftModelForCausalLM``, which calls the model's
    ``prepare_inputs_for_generation``), else None: a plain ``PeftModel``, which passes its
    arguments to ``model`` unchanged, as our GPT (``forward(idx)``) needs. (PEFT's
    ``FEATURE_EXTRACTION`` wrapper would call it with ``input_ids=...`` and fail.)"""
    return "CAUSAL_LM" if callable(getattr(model, "prepare_inputs_for_generation", None)) else None


def peft_fan_in_fan_out(model: nn.Module, adapter: Adapter) -> bool:
    """PEFT's ``fan_in_fan_out`` for ``adapter`` on ``model``: True when its modules are
    ``Conv1D`` (GPT-2). The factors are the same either way; PEFT reads the flag per module
    type (and warns on a wrong one), so it documents the base weight's layout."""
    return any(is_fan_in_fan_out(base_linear(model, path)) for path in adapter.paths)


def layer_of(path: str) -> tuple[str, int] | None:
    """``("blocks", 3)`` for ``blocks.3.attn.W_Q``: the first all-digit segment and the module
    list before it, which is the index PEFT's ``layers_pattern`` rule reads; None if none."""
    parts = path.split(".")
    for i in range(1, len(parts) - 1):
        if re.fullmatch(r"[0-9]+", parts[i]):
            return parts[i - 1], int(parts[i])
    return None


def _peft_targets(adapter: Adapter) -> dict:
    """``target_modules``, ``layers_to_transform``, ``layers_pattern`` under which PEFT adapts
    exactly ``adapter.paths``. PEFT matches a target name as a module-path suffix after a dot,
    and with ``layers_to_transform`` keeps the modules whose index after ``layers_pattern`` is
    listed. So when the paths are every one of their last segments (``W_Q``, ``q_proj``) in
    every one of their layers of one module list, those names, and (for a layer-restricted
    config) the layers and the list's name; otherwise (e.g. ``cat`` of q in layer 0 with v in
    layer 1) the full paths, which PEFT matches exactly. ``config.layers=None`` means the
    paths cover every layer of the model, as :func:`~toymodels.lora.inject_lora` makes them."""
    cells = {path: (layer_of(path), path.rsplit(".", 1)[-1]) for path in adapter.factors}
    lists = {layer[0] for layer, _ in cells.values() if layer is not None}
    layers = {layer[1] for layer, _ in cells.values() if layer is not None}
    names = {name for _, name in cells.values()}
    product = (None not in {layer for layer, _ in cells.values()} and len(lists) == 1
               and len(set(cells.values())) == len(cells) == len(layers) * len(names))
    if not product:
        return {"target_modules": sorted(adapter.factors), "layers_to_transform": None, "layers_pattern": None}
    restricted = adapter.config.layers is not None
    return {"target_modules": sorted(names), "layers_to_transform": sorted(layers) if restricted else None,
            "layers_pattern": lists.pop() if restricted else None}


def peft_config(adapter: Adapter, base_model_name_or_path: str | None = None,
                task_type: str | None = None, fan_in_fan_out: bool = False) -> dict:
    """``adapter_config.json`` in PEFT's ``LoraConfig`` format, loadable with
    ``peft.PeftModel.from_pretrained(base, folder)``; ``task_type``: see :func:`peft_task_type`
    (None suits any model); ``fan_in_fan_out``: :func:`peft_fan_in_fan_out`."""
    if task_type not in PEFT_TASK_TYPES:
        raise ValueError(f"task_type={task_type!r}: must be one of {PEFT_TASK_TYPES} "
                         "(peft_task_type(model) picks it for a model)")
    if not adapter.factors:
        raise ValueError("adapter has no modules: nothing to save")
    cfg = adapter.config
    rank_pattern, alpha_pattern = {}, {}
    for path, f in adapter.factors.items():
        if f.rank != cfg.rank:
            rank_pattern[path] = f.rank
        if not math.isclose(_alpha(f, cfg.rslora), cfg.alpha, rel_tol=1e-9):
            alpha_pattern[path] = _alpha(f, cfg.rslora)
    return {
        "peft_type": "LORA", "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path, "revision": None,
        "r": cfg.rank, "lora_alpha": cfg.alpha, "use_rslora": cfg.rslora,
        "lora_dropout": cfg.dropout, "bias": "none", "fan_in_fan_out": bool(fan_in_fan_out), **_peft_targets(adapter),
        "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
        "init_lora_weights": True if cfg.init == "kaiming_uniform" else cfg.init,
        "modules_to_save": None, "use_dora": False, "inference_mode": True,
    }


def save_adapter(adapter: Adapter, directory: str | Path, base_model_name_or_path: str | None = None,
                 task_type: str | None = None, fan_in_fan_out: bool = False) -> Path:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` into ``directory``
    (:func:`peft_config`; for a Hugging Face causal LM ``task_type=peft_task_type(base)`` and
    ``fan_in_fan_out=peft_fan_in_fan_out(base, adapter)``). An adapter's entity row deltas
    (``adapter.rows``) go beside them, into ``entity_rows.safetensors`` (PEFT ignores it)."""
    config = peft_config(adapter, base_model_name_or_path, task_type, fan_in_fan_out)  # validates before writing
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(peft_state_dict(adapter), directory / WEIGHTS_NAME)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if adapter.rows is not None:
        save_rows(adapter.rows, directory)
    else:  # a rows file left by an earlier save would load as this adapter's
        (directory / ROWS_NAME).unlink(missing_ok=True)
    return directory


def _pattern_value(patterns: dict, path: str, default):
    """PEFT's rule: a pattern key applies when ``path`` ends with it after a dot (regex)."""
    return next((value for key, value in patterns.items() if pattern_matches(key, path)), default)


def read_peft_checkpoint(directory: str | Path, check_finite: bool = True) -> tuple[dict, dict[str, Factors]]:
    """``(adapter_config.json as a dict, module path -> Factors)`` of a PEFT LoRA folder, no
    base model needed (safetensors only, never pickle). Per module ``scale = alpha / r``
    (``/ sqrt(r)`` with ``use_rslora``), ``alpha`` and ``r`` from PEFT's ``alpha_pattern`` and
    ``rank_pattern`` (matched as PEFT matches them) or the globals. ``init_lora_weights`` is
    ignored: the init only matters before training, and the weights are on disk.

    Everything is checked before a tensor is read (:mod:`toymodels.validate`): the config
    (a plain LoRA, well-typed), the safetensors header (not truncated, not a pickle), the
    tensor names and shapes (``lora_A``/``lora_B`` pairs), and that each module's rank is the
    one the config gives: PEFT refuses a checkpoint whose ``r`` disagrees with its tensors,
    and so do we, rather than scale by ``alpha / (the tensor's rank)``. ``check_finite``:
    refuse NaN/Inf in any tensor (:class:`toymodels.validate.NonFiniteError`). Every problem
    is a one-line ValueError naming the file; missing files are FileNotFoundError."""
    directory = Path(directory)
    weights, config_file = directory / WEIGHTS_NAME, directory / CONFIG_NAME
    pickled = directory / "adapter_model.bin"
    if not weights.is_file() and pickled.is_file():
        raise ValueError(f"{pickled}: a pickle, and the folder has no {WEIGHTS_NAME}; {NEVER_UNPICKLE}: "
                         + convert_hint(pickled, str(weights)))
    for needed in (config_file, weights):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed}: no such file, so {directory} is not a PEFT adapter folder "
                                    f"(it needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    meta = read_json_object(config_file, "a PEFT LoraConfig (peft_type, r, lora_alpha, ...)")
    check_adapter_config(meta, config_file)
    header = safetensors_header(weights)
    pairs = lora_pairs(header, weights)
    ranks, alphas = meta.get("rank_pattern") or {}, meta.get("alpha_pattern") or {}
    rank = {stem: _pattern_value(ranks, stem.removeprefix(PEFT_PREFIX), meta["r"]) for stem in pairs}
    for stem, (key_A, _) in pairs.items():
        if header[key_A].shape[0] != rank[stem]:
            source = "rank_pattern" if rank[stem] != meta["r"] else "r"
            raise ValueError(f"{config_file}: {source} gives module {stem.removeprefix(PEFT_PREFIX)} rank "
                             f"{rank[stem]}, but its lora_A is {header[key_A].shape}: the config does not describe "
                             "these weights (PEFT refuses them too); fix r / rank_pattern")
    try:
        tensors = load_file(weights)
    except SafetensorError as exc:  # the header check passed; anything left is corruption
        raise ValueError(f"{weights}: unreadable safetensors file ({exc}): save it again") from None
    rslora = bool(meta.get("use_rslora", False))
    factors = {}
    for stem, (key_A, key_B) in pairs.items():
        A, B = tensors[key_A], tensors[key_B]
        if check_finite:
            require_finite(f"{weights}: {key_A}", A)
            require_finite(f"{weights}: {key_B}", B)
        path, r = stem.removeprefix(PEFT_PREFIX), rank[stem]
        alpha = float(_pattern_value(alphas, path, meta["lora_alpha"]))
        factors[path] = Factors(A=A, B=B, scale=alpha / (math.sqrt(r) if rslora else r))
    return meta, factors


def load_adapter(directory: str | Path, base: nn.Module, role_map: RoleMap, check_finite: bool = True) -> Adapter:
    """Read a PEFT LoRA checkpoint (:func:`read_peft_checkpoint`) written for ``base``.
    ``role_map`` turns module paths back into the config's ``targets`` (in role-map order);
    every path must be in it, and shapes must match ``base`` (ValueError naming module and
    shapes otherwise). Any ``init_lora_weights`` loads (PEFT's False, "gaussian", "pissa",
    ...): the config records ours when it is one of :class:`LoRAConfig`'s, else the default.
    Caveat: PiSSA / OLoRA / LoftQ inits also change the BASE weights (to a residual); such a
    checkpoint means ``base + delta`` only on that residual base, or after PEFT converted it
    to a plain LoRA (``path_initial_model_for_weight_conversion``). That is the caller's to know.
    ``check_finite``: as in :func:`read_peft_checkpoint`."""
    directory = Path(directory)
    meta, factors = read_peft_checkpoint(directory, check_finite)
    roles = {path: role for (role, _), path in role_map.items()}
    for path in factors:
        if path not in roles:
            raise ValueError(f"{path}: not in the role map of this model; known paths end "
                             f"like {sorted(roles)[:3]}")
    layers = meta.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) else layers  # PEFT accepts one layer as an int
    init = meta.get("init_lora_weights", True)
    init = "kaiming_uniform" if init is True else init
    defaults = {f.name: f.default for f in dataclasses.fields(LoRAConfig)}
    try:
        config = LoRAConfig(
            rank=meta["r"], alpha=float(meta["lora_alpha"]), rslora=bool(meta.get("use_rslora", False)),
            dropout=float(meta.get("lora_dropout", 0.0)),
            targets=tuple(dict.fromkeys(role for path, role in roles.items() if path in factors)),
            layers=tuple(layers) if layers is not None else None,
            init=init if init in INITS else defaults["init"])
    except ValueError as exc:
        raise ValueError(f"{directory / CONFIG_NAME}: {exc}") from None
    adapter = Adapter(config, factors, load_rows(directory))  # entity rows: where save_adapter wrote them
    check_shapes(base, adapter)
    return adapter
