"""Role maps of Hugging Face causal LMs: which linear map of each decoder block a LoRA role names.

A role map is ``(role, layer) -> module path`` (:data:`toymodels.lora.RoleMap`) in the HF
model's own paths, which :class:`toymodels.pretrained.LogitsLM` keeps, so adapters trained on
it and saved (:func:`toymodels.peft_checkpoint.save_adapter`) load with PEFT on the HF model.
:func:`role_map` dispatches on ``config.model_type`` (:data:`FAMILIES`):

=============================================  ==============  =====================================
family (``model_type``)                         blocks          role: module inside a block
=============================================  ==============  =====================================
Llama-style (llama, qwen2, mistral, gemma,      model.layers    q k v o: ``self_attn.{q,k,v,o}_proj``
gemma2, gemma3_text)                                            gate up down: ``mlp.{gate,up,down}_proj``
Phi-3 (phi3)                                    model.layers    qkv: ``self_attn.qkv_proj``, o: ``self_attn.o_proj``
                                                                gate_up: ``mlp.gate_up_proj``, down: ``mlp.down_proj``
GPT-2 (gpt2), every map a ``Conv1D``            transformer.h   qkv: ``attn.c_attn``, o: ``attn.c_proj``
                                                                up: ``mlp.c_fc``, down: ``mlp.c_proj``
=============================================  ==============  =====================================

Fused maps get fused roles. Phi-3's ``qkv_proj`` and GPT-2's ``c_attn`` stack
``[W_Q; W_K; W_V]`` on the output side, Phi-3's ``gate_up_proj`` stacks ``[W_gate; W_up]``.
Role ``qkv`` (``gate_up``) puts ONE LoRA on the stacked map: a rank-r delta of shape
``(d_q + 2 d_kv, d_model)``, which is what PEFT does with ``target_modules=["qkv_proj"]``. It
is not LoRAs on q, k and v separately (three independent rank-r blocks, rank up to 3r), so
these families have no ``q``/``k``/``v``/``gate`` roles: a config naming one fails in
:func:`toymodels.lora.target_paths` with the roles the model has, rather than meaning
something else. GPT-2's MLP has no gate: ``c_fc`` (d_model -> d_mlp) is ``up``, its
``c_proj`` is ``down``. GPT-2's ``Conv1D`` stores ``W.T``; ``toymodels.lora`` handles that.

Any other ``model_type`` has no table. Then the config's ``lora.targets`` name modules: a
target picks, in every numbered block, the linear map whose path inside the block is it or
ends with ``.`` + it (PEFT's ``target_modules`` rule), and the role IS the target. If no
target fits, a one-line ``ValueError`` lists the names the model has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from torch import nn

from toymodels.lora import is_linear_map


@dataclass(frozen=True)
class Family:
    """``roles``: role -> module path inside a block; blocks are ``<blocks>.<layer>``."""

    name: str
    blocks: str
    roles: Mapping[str, str]


LLAMA = Family("Llama-style", "model.layers", {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"})
PHI3 = Family("Phi-3", "model.layers", {
    "qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate_up": "mlp.gate_up_proj", "down": "mlp.down_proj"})
GPT2 = Family("GPT-2", "transformer.h", {
    "qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"})
FAMILIES: dict[str, Family] = {"llama": LLAMA, "qwen2": LLAMA, "mistral": LLAMA, "gemma": LLAMA,
                               "gemma2": LLAMA, "gemma3_text": LLAMA, "phi3": PHI3, "gpt2": GPT2}


def family_role_map(model: nn.Module, family: Family) -> dict[tuple[str, int], str]:
    """``(role, layer) -> path`` for every role of ``family`` in each of the
    ``config.num_hidden_layers`` blocks; ``ValueError`` if a block lacks one of its maps."""
    names = dict(model.named_modules())
    out = {}
    for layer in range(model.config.num_hidden_layers):
        for role, inner in family.roles.items():
            path = f"{family.blocks}.{layer}.{inner}"
            if not is_linear_map(names.get(path)):
                raise ValueError(f"{type(model).__name__}: no linear map {path!r}; the {family.name} role map "
                                 f"needs {', '.join(family.roles.values())} in every block of {family.blocks}")
            out[(role, layer)] = path
    return out


def block_maps(model: nn.Module) -> list[tuple[int, str, str]]:
    """``(layer, name inside the block, path)`` of every linear map (``nn.Linear``/``Conv1D``)
    under a numbered block: the layer is the path's first all-digit segment."""
    out = []
    for path, module in model.named_modules():
        parts = path.split(".")
        digits = [i for i, part in enumerate(parts[:-1]) if part.isascii() and part.isdigit()]
        if digits and is_linear_map(module):
            out.append((int(parts[digits[0]]), ".".join(parts[digits[0] + 1:]), path))
    return out


def named_role_map(model: nn.Module, targets: Sequence[str]) -> dict[tuple[str, int], str]:
    """``(target, layer) -> path``: in each block, the map whose name inside the block is
    ``target`` or ends with ``"." + target``. Two maps of one block for one target, or two
    targets on one map, are a ``ValueError`` naming them."""
    out: dict[tuple[str, int], str] = {}
    for layer, name, path in block_maps(model):
        hits = [t for t in targets if name == t or name.endswith("." + t)]
        if len(hits) > 1:
            raise ValueError(f"lora.targets entries {hits} all name {path}: keep one")
        if hits and (hits[0], layer) in out:
            raise ValueError(f"lora.targets entry {hits[0]!r} names two maps of block {layer} "
                             f"({out[(hits[0], layer)]}, {path}): give more of the name, e.g. {name!r}")
        if hits:
            out[(hits[0], layer)] = path
    return out


def role_map(model: nn.Module, targets: Sequence[str] | None = None) -> dict[tuple[str, int], str]:
    """The role map of a HF causal LM: its family's (``targets`` is then not used), or, for a
    ``model_type`` without one, the module names in ``targets`` (module docstring)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in FAMILIES:
        return family_role_map(model, FAMILIES[model_type])
    found = list(dict.fromkeys(name for _, name, _ in block_maps(model)))
    if not found:
        raise ValueError(f"model_type {model_type!r} has no role map and no linear maps inside numbered "
                         f"blocks: LoRA has nothing to target (role maps exist for {', '.join(FAMILIES)})")
    if targets:
        mapped = named_role_map(model, targets)
        if not (missing := [t for t in targets if t not in {role for role, _ in mapped}]):
            return mapped
    unmatched = f" and lora.targets {list(missing)} name none of its maps" if targets else ""
    example = ",".join(dict.fromkeys([found[0], found[-1]]))
    raise ValueError(f"model_type {model_type!r} has no role map (they exist for {', '.join(FAMILIES)}){unmatched}; "
                     f"its linear maps in each block end in: {', '.join(found)}; name the ones to adapt in "
                     f"lora.targets (e.g. --set protocol.lora.targets={example})")
