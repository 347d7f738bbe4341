"""Role maps for six Hugging Face families (toymodels/hf_roles.py), each on a tiny random
config built here (no download): our LoRA injected through the role map with NONZERO factors,
one training step, saved, then loaded by PEFT onto a fresh copy of the base. Oracles: PEFT's
own LoRA forward (equal logits) and PEFT's own merge (equal merged weights), which covers
GPT-2's ``Conv1D`` (stored ``W.T``, PEFT's ``fan_in_fan_out``). Also: an architecture
without a role map gets a one-line error naming ``lora.targets`` and its maps, and following
that advice works."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from conftest import seeded  # noqa: E402
from toymodels import reuse  # noqa: E402
from theory.merge import Factors  # noqa: E402
from toymodels.adapters import Adapter, apply_adapter, extract_adapter, merge_into_new_model, random_adapter  # noqa: E402
from toymodels.peft_checkpoint import load_adapter, peft_fan_in_fan_out, peft_task_type, save_adapter  # noqa: E402
from toymodels.hf_roles import FAMILIES, block_maps, role_map  # noqa: E402
from toymodels.lora import LoRAConfig, LoRALinear, linear_weight  # noqa: E402
from toymodels.pretrained import LogitsLM, tiny_causal_lm  # noqa: E402
from toymodels.routing import set_oracle_weights  # noqa: E402
from toymodels.scoring import ReuseOptions, method_options  # noqa: E402

VOCAB = 64
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # inside the tiny vocabulary
DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **IDS)
# role -> (d_out, d_in) of W from the configs' sizes: d_model 32, 4 heads of 8 (2 for k, v), d_mlp 64
LLAMA_ROLES = {"q": (32, 32), "k": (16, 32), "v": (16, 32), "o": (32, 32), "gate": (64, 32), "up": (64, 32),
               "down": (32, 64)}
PHI3_ROLES = {"qkv": (32 + 2 * 16, 32), "o": (32, 32), "gate_up": (2 * 64, 32), "down": (32, 64)}
GPT2_ROLES = {"qkv": (3 * 32, 32), "o": (32, 32), "up": (4 * 32, 32), "down": (32, 4 * 32)}  # d_mlp = 4 d_model

# model_type -> (config, role -> (d_out, d_in), does the family use Conv1D)
CASES = {
    "llama": (lambda: transformers.LlamaConfig(**DECODER), LLAMA_ROLES, False),
    "qwen2": (lambda: transformers.Qwen2Config(**DECODER), LLAMA_ROLES, False),
    "mistral": (lambda: transformers.MistralConfig(**DECODER), LLAMA_ROLES, False),
    "gemma": (lambda: transformers.GemmaConfig(**DECODER, head_dim=8), LLAMA_ROLES, False),
    "gemma2": (lambda: transformers.Gemma2Config(**DECODER, head_dim=8), LLAMA_ROLES, False),
    "gemma3_text": (lambda: transformers.Gemma3TextConfig(**DECODER, head_dim=8), LLAMA_ROLES, False),
    "phi3": (lambda: transformers.Phi3Config(**DECODER), PHI3_ROLES, False),
    "gpt2": (lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                             **IDS), GPT2_ROLES, True),
}


def tokens() -> torch.Tensor:
    return torch.randint(3, VOCAB, (3, 9), generator=seeded(1))  # (B, T)


def _lora_paths(peft_model) -> set[str]:
    prefix = "base_model.model."
    return {name.removeprefix(prefix) for name, m in peft_model.named_modules()
            if hasattr(m, "lora_A") and name.startswith(prefix)}


def train_save_and_load_in_peft(base: nn.Module, roles: dict, folder) -> tuple[dict, dict]:
    """Our LoRA on every role of ``roles`` (nonzero B, then one SGD step), saved to ``folder``
    and loaded by PEFT on a deep copy of ``base``; asserts equal logits (unmerged and merged)
    and equal merged weights. Returns (the saved adapter_config.json, the adapter's paths)."""
    cfg = LoRAConfig(rank=2, alpha=4.0, targets=tuple(dict.fromkeys(role for role, _ in roles)))
    lm, x = LogitsLM(base), tokens()
    model = apply_adapter(lm, random_adapter(lm, cfg, roles, seeded(2), B_std=0.3))
    before = extract_adapter(model, cfg)
    logits = model(x)  # (B, T, d_vocab)
    loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    adapter = extract_adapter(model, cfg)
    assert set(adapter.paths) == set(roles.values())
    for path, f in adapter.factors.items():  # the step reached every wrapped map
        assert not torch.equal(f.A, before.factors[path].A) and not torch.equal(f.B, before.factors[path].B), path
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.endswith((".A", ".B")))

    save_adapter(adapter, folder, task_type=peft_task_type(base), fan_in_fan_out=peft_fan_in_fan_out(base, adapter))
    meta = json.loads((folder / "adapter_config.json").read_text())
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
    assert isinstance(loaded, peft.PeftModelForCausalLM) and _lora_paths(loaded) == set(adapter.paths)
    with torch.no_grad():
        ours, theirs = model(x), loaded(input_ids=x).logits
        assert (ours - base(input_ids=x).logits).abs().max() > 1e-2  # the adapter does something
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
        merged = merge_into_new_model(lm, adapter)
        torch.testing.assert_close(merged(x), ours, atol=1e-4, rtol=0)  # merging reorders float sums
        peft_merged = dict(loaded.merge_and_unload().named_parameters())
        for name, p in merged.named_parameters():  # same layout and values as PEFT's merge
            torch.testing.assert_close(p, peft_merged[name], atol=1e-6, rtol=0, msg=name)
    back = load_adapter(folder, lm, roles)  # our own reader takes it back, Conv1D included
    assert back.config.targets == cfg.targets
    for path, f in adapter.factors.items():
        torch.testing.assert_close(back.factors[path].delta, f.delta)
    return meta, adapter.paths


@pytest.mark.parametrize("model_type", list(CASES))
def test_role_map_lora_trains_saves_and_loads_in_peft(model_type, tmp_path):
    make_config, want_roles, conv1d = CASES[model_type]
    base = tiny_causal_lm(make_config(), seeded(0))
    assert base.config.model_type == model_type
    roles = role_map(base)
    assert list(dict.fromkeys(role for role, _ in roles)) == list(want_roles)
    assert len(roles) == 2 * len(want_roles) and {layer for _, layer in roles} == {0, 1}
    assert roles == role_map(base, ("ignored",))  # a family's table wins over names
    for (role, layer), path in roles.items():
        module = base.get_submodule(path)
        assert (type(module).__name__ == "Conv1D") == conv1d and f".{layer}." in path, path
        W = linear_weight(module)  # (d_out, d_in) whatever the stored layout
        assert tuple(W.shape) == want_roles[role], (role, path)
        assert module(torch.zeros(1, W.shape[1])).shape == (1, W.shape[0]), path
    meta, _ = train_save_and_load_in_peft(base, roles, tmp_path)
    assert meta["fan_in_fan_out"] is conv1d and meta["task_type"] == "CAUSAL_LM"


def _scaled(base: nn.Module, roles: dict, factors: dict[str, float], layer: int) -> torch.Tensor:
    """Logits of a copy of ``base`` with the weight (and bias) of each role in ``factors``
    multiplied by its factor in block ``layer``, on one-token rows."""
    model = copy.deepcopy(base)
    with torch.no_grad():
        for role, factor in factors.items():
            for p in model.get_submodule(roles[(role, layer)]).parameters():
                p.mul_(factor)
        return model(input_ids=tokens()[:, :1]).logits  # (B, 1, d_vocab)


@pytest.mark.parametrize("model_type", [t for t, case in CASES.items() if case[1] is LLAMA_ROLES])
def test_llama_style_roles_do_what_they_are_named(model_type):
    """k and v (both (16, 32)), gate and up (both (64, 32)) are told apart by what they do,
    not by name. On one token, attention weights are softmax over one key = 1: zeroing q or k
    changes nothing, zeroing v does. The MLP is down(act(gate x) * up x): up x 2 with
    down x 0.5 cancels exactly, gate x 2 with down x 0.5 does not (act is nonlinear)."""
    base = tiny_causal_lm(CASES[model_type][0](), seeded(0))
    roles = role_map(base)
    with torch.no_grad():
        plain = base(input_ids=tokens()[:, :1]).logits
    for role in ("q", "k"):
        torch.testing.assert_close(_scaled(base, roles, {role: 0.0}, 1), plain, atol=1e-5, rtol=0)
    assert (_scaled(base, roles, {"v": 0.0}, 1) - plain).abs().max() > 1e-3
    torch.testing.assert_close(_scaled(base, roles, {"up": 2.0, "down": 0.5}, 0), plain, atol=1e-5, rtol=0)
    assert (_scaled(base, roles, {"gate": 2.0, "down": 0.5}, 0) - plain).abs().max() > 1e-3


def test_families_table_covers_the_six_families():
    assert set(FAMILIES) == set(CASES)


def test_conv1d_lora_equals_dense_oracle():
    """On a Conv1D (y = x @ W_stored + b, W_stored = W.T) the LoRA adds x @ (scale B A).T."""
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(nf=5, nx=7)
    with torch.no_grad():
        conv.weight.normal_(generator=seeded(0))
        conv.bias.normal_(generator=seeded(1))
    lora = LoRALinear(conv, rank=2, scale=1.5)
    assert lora.A.shape == (2, 7) and lora.B.shape == (5, 2)  # (r, d_in), (d_out, r)
    with torch.no_grad():
        lora.A.normal_(generator=seeded(2))
        lora.B.normal_(generator=seeded(3))
    x = torch.randn(4, 7, generator=seeded(4))
    W = conv.weight.T + 1.5 * lora.B @ lora.A  # (d_out, d_in)
    torch.testing.assert_close(lora(x), x @ W.T + conv.bias)


# --- an architecture without a role map --------------------------------------------------

def tiny_falcon() -> nn.Module:
    config = transformers.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, **IDS)
    return tiny_causal_lm(config, seeded(0))


@pytest.mark.parametrize("targets", [pytest.param(None, id="no-targets"),
                                     pytest.param(("q", "v", "up", "down"), id="llama-roles"),
                                     pytest.param(("query_key_value", "w_in"), id="one-unknown")])
def test_unknown_architecture_error_names_lora_targets_and_its_maps(targets):
    with pytest.raises(ValueError) as err:
        role_map(tiny_falcon(), targets)
    msg = str(err.value)
    assert "\n" not in msg and "model_type 'falcon' has no role map" in msg and "lora.targets" in msg
    assert ("self_attention.query_key_value, self_attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h"
            in msg)
    if targets:
        assert str([t for t in targets if t != "query_key_value"]) in msg  # the names that matched nothing


def test_unknown_architecture_with_module_names_in_lora_targets(tmp_path):
    """Following the error's advice: targets named by module (suffix after a dot, as PEFT
    matches them) give a role map that trains, saves and loads in PEFT."""
    base = tiny_falcon()
    roles = role_map(base, ("query_key_value", "dense"))
    assert roles == {(t, l): f"transformer.h.{l}.{inner}" for l in (0, 1) for t, inner in
                     (("query_key_value", "self_attention.query_key_value"), ("dense", "self_attention.dense"))}
    meta, _ = train_save_and_load_in_peft(base, roles, tmp_path)
    assert meta["fan_in_fan_out"] is False


def test_ambiguous_module_name_is_an_error(monkeypatch):
    """GPT-2 read by names only: c_proj is in attn and in mlp, so it must be spelled out."""
    base = tiny_causal_lm(CASES["gpt2"][0](), seeded(0))
    monkeypatch.setattr(base.config, "model_type", "my_gpt")
    with pytest.raises(ValueError, match=r"'c_proj' names two maps of block 0 .*give more of the name"):
        role_map(base, ("c_proj",))
    with pytest.raises(ValueError, match=r"entries \['c_proj', 'attn.c_proj'\] all name transformer.h.0.attn.c_proj"):
        role_map(base, ("c_proj", "attn.c_proj"))
    with pytest.raises(ValueError, match=r"lora.targets \['proj'\] name none of its maps"):
        role_map(base, ("proj",))  # a name matches after a dot, as in PEFT: not c_proj
    assert role_map(base, ("attn.c_proj",)) == {("attn.c_proj", l): f"transformer.h.{l}.attn.c_proj" for l in (0, 1)}


def test_block_maps_take_the_first_index_as_the_layer():
    """Nested numbering (experts inside a block): the layer is the first index, the rest is
    the map's name inside the block."""
    block = nn.Module()
    block.experts = nn.ModuleList([nn.ModuleDict({"w1": nn.Linear(4, 4)}) for _ in range(2)])
    block.norm = nn.LayerNorm(4)  # not a linear map
    model = nn.Module()
    model.layers = nn.ModuleList([block, copy.deepcopy(block)])
    model.head = nn.Linear(4, 2)  # outside the blocks
    assert block_maps(model) == [(l, f"experts.{e}.w1", f"layers.{l}.experts.{e}.w1") for l in (0, 1) for e in (0, 1)]


def _conv1d_as_linear(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Conv1D replaced by the nn.Linear of the same map."""
    new = copy.deepcopy(model)
    for path, module in list(new.named_modules()):
        if type(module).__name__ == "Conv1D":
            linear = nn.Linear(module.nx, module.nf)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)  # (d_out, d_in)
                linear.bias.copy_(module.bias)
            new.set_submodule(path, linear.requires_grad_(False))
    return new


@pytest.mark.parametrize("method", list(reuse.METHODS))
def test_every_reuse_method_on_conv1d_equals_it_on_nn_linear(method):
    """Merges and routers on GPT-2's Conv1D maps give the logits they give on the same model
    with those maps as nn.Linear (where the methods are tested against their oracles)."""
    gpt2 = tiny_causal_lm(CASES["gpt2"][0](), seeded(0))
    lm, twin = LogitsLM(gpt2), LogitsLM(_conv1d_as_linear(gpt2))
    assert not any(type(m).__name__ == "Conv1D" for m in twin.modules())
    roles = role_map(gpt2)
    cfg = LoRAConfig(rank=2, alpha=4.0, targets=("qkv", "o", "up", "down"))
    bank = [random_adapter(lm, cfg, roles, seeded(s), B_std=0.3) for s in (5, 6)]
    x = tokens()
    setting = SimpleNamespace(lora=cfg, reuse=ReuseOptions(ties_density=0.5, lorahub_budget=3))

    def options() -> dict:  # fresh generators each time: both models see the same draws
        return method_options(method, setting, len(bank), gen=seeded(7), rng=np.random.default_rng(0),
                              loss_fn=lambda m: m(x).logsumexp(-1).mean().item())

    with torch.no_grad():
        ours, linear = (reuse.METHODS[method](model, bank, **options()) for model in (lm, twin))
        if method == "oracle":
            for model in (ours, linear):
                set_oracle_weights(model, torch.tensor([0.3, 0.7]))
        assert (ours(x) - lm(x)).abs().max() > 1e-2  # the method changed the model
        torch.testing.assert_close(ours(x), linear(x), atol=1e-4, rtol=0)


def test_inspect_reads_a_gpt2_adapter_against_its_base_folder(tmp_path, capsys):
    """``lora-limits inspect ADAPTER --base FOLDER`` on a GPT-2 adapter (fan_in_fan_out: true)
    and a GPT-2 folder: read, shapes checked in (d_out, d_in), exit 0; an adapter for
    transposed shapes is refused."""
    from analysis.cli import main

    base = tiny_causal_lm(CASES["gpt2"][0](), seeded(0))
    base.save_pretrained(tmp_path / "gpt2")
    roles = role_map(base)
    cfg = LoRAConfig(rank=2, targets=("qkv", "up"))
    adapter = random_adapter(LogitsLM(base), cfg, roles, seeded(1), B_std=0.3)
    save_adapter(adapter, tmp_path / "ad", task_type="CAUSAL_LM", fan_in_fan_out=True)
    argv = ["inspect", str(tmp_path / "ad"), "--base", str(tmp_path / "gpt2"), "--json", "--no-figures"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["adapters"]["ad"]["modules"] == 4
    flipped = Adapter(cfg, {p: Factors(A=f.B.T.contiguous(), B=f.A.T.contiguous(), scale=f.scale)
                            for p, f in adapter.factors.items()})  # (d_in, d_out): the stored layout
    save_adapter(flipped, tmp_path / "flipped", fan_in_fan_out=True)
    assert main([*argv[:1], str(tmp_path / "flipped"), *argv[2:]]) == 2
    assert "shapes do not fit" in capsys.readouterr().err
