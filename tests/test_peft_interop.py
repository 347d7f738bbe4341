"""Our adapter files are PEFT LoRA checkpoints, both ways, on a tiny random Llama and on
our toy GPT (not a Hugging Face model: PEFT wraps it as a plain ``PeftModel``).

Oracle: PEFT itself (``PeftModel.from_pretrained`` / ``get_peft_model``). Every adapter is
NONZERO (random A and B), so equal logits mean equal deltas."""
from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from conftest import TINY_GPT, seeded  # noqa: E402
from toymodels import reuse  # noqa: E402
from toymodels.adapters import Adapter, apply_adapter, merge_into_new_model, random_adapter  # noqa: E402
from toymodels.peft_checkpoint import load_adapter, peft_task_type, save_adapter  # noqa: E402
from toymodels.lora import LoRAConfig  # noqa: E402
from toymodels.model import GPT, role_modules  # noqa: E402
from toymodels.pretrained import llama_role_map, tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def base():
    return tiny_llama(torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 128, (3, 9), generator=torch.Generator().manual_seed(1))  # (B, T)


def _logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits  # (B, T, d_vocab)


def _peft_trained(base, config, folder):
    """PEFT's LoRA on a copy of ``base`` with nonzero B (as after training), saved to ``folder``."""
    torch.manual_seed(3)  # PEFT draws its init from the global RNG; tests may seed it
    model = peft.get_peft_model(copy.deepcopy(base), config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("cfg", [
    pytest.param(LoRAConfig(rank=2, alpha=4.0, targets=("q", "v")), id="r=2,qv"),
    pytest.param(LoRAConfig(rank=4, alpha=3.0, rslora=True, targets=("o", "gate", "down"), layers=(1,)),
                 id="r=4,rslora,mlp,layer1"),
])
def test_ours_loads_in_peft(base, tokens, tmp_path, cfg):
    """save_adapter -> PeftModel.from_pretrained gives the logits of our unmerged LoRA."""
    adapter = random_adapter(base, cfg, llama_role_map(base), torch.Generator().manual_seed(2), B_std=0.3)
    save_adapter(adapter, tmp_path, task_type=peft_task_type(base))
    ours = _logits(apply_adapter(base, adapter), tokens)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert isinstance(loaded, peft.PeftModelForCausalLM)  # generate() works on it
    theirs = _logits(loaded, tokens)
    assert (ours - _logits(base, tokens)).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize("rslora", [pytest.param(False, id="plain"), pytest.param(True, id="rslora")])
def test_peft_saved_loads_in_ours(base, tokens, tmp_path, rslora):
    """A PEFT-trained-style adapter folder (nonzero factors, rank_pattern for one module)
    -> load_adapter -> apply_adapter gives PEFT's logits."""
    config = peft.LoraConfig(r=2, lora_alpha=5, target_modules=["k_proj", "up_proj"], use_rslora=rslora,
                             rank_pattern={"model.layers.0.mlp.up_proj": 3})
    # init_lora_weights=True (PEFT's default) gives B = 0; B is drawn below. (False is not
    # read by load_adapter yet: LoRAConfig.init only knows kaiming_uniform / gaussian.)
    model = _peft_trained(base, config, tmp_path)
    adapter = load_adapter(tmp_path, base, llama_role_map(base))
    assert adapter.factors["model.layers.0.mlp.up_proj"].rank == 3
    assert set(adapter.config.targets) == {"k", "up"}
    torch.testing.assert_close(_logits(apply_adapter(base, adapter), tokens), _logits(model, tokens),
                               atol=1e-4, rtol=0)


# --- the toy GPT --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt():
    return GPT(TINY_GPT, generator=seeded(0))


@pytest.fixture(scope="module")
def idx():
    return torch.randint(0, TINY_GPT.d_vocab, (3, TINY_GPT.n_ctx), generator=seeded(1))  # (B, T)


def _gpt_adapter(gpt, seed, **cfg) -> Adapter:
    return random_adapter(gpt, LoRAConfig(**cfg), role_modules(gpt), seeded(seed), B_std=0.3)


def _cat_unequal_ranks(gpt) -> Adapter:
    """cat of rank 2 on every q and v with rank 3 on q: ranks 5 (q) and 4 (v: the second
    adapter's missing v counts as a zero rank-2 block), scale 1 each."""
    return reuse.cat([_gpt_adapter(gpt, 3, rank=2, alpha=3.0, targets=("q", "v")),
                      _gpt_adapter(gpt, 4, rank=3, alpha=5.0, targets=("q",))], [0.7, 1.5])


def _cat_no_product(gpt) -> Adapter:
    """q in layer 0 with mlp_out in layer 1: no (names x layers) grid selects just these two."""
    return reuse.cat([_gpt_adapter(gpt, 5, rank=2, targets=("q",), layers=(0,)),
                      _gpt_adapter(gpt, 6, rank=2, targets=("mlp_out",), layers=(1,))], [1.0, 1.0])


def _lora_paths(peft_model) -> set[str]:
    """Module paths (in the base model) that PEFT put a LoRA on."""
    prefix = "base_model.model."
    return {name.removeprefix(prefix) for name, m in peft_model.named_modules()
            if hasattr(m, "lora_A") and name.startswith(prefix)}


@pytest.mark.parametrize("make,expect", [
    pytest.param(lambda g: _gpt_adapter(g, 2, rank=2, alpha=4.0), {"layers_to_transform": None}, id="full"),
    pytest.param(lambda g: _gpt_adapter(g, 2, rank=2, alpha=4.0, targets=("q", "mlp_in"), layers=(1,)),
                 {"layers_to_transform": [1], "layers_pattern": "blocks", "target_modules": ["W_Q", "W_in"]},
                 id="layer1"),
    pytest.param(lambda g: _gpt_adapter(g, 2, rank=4, alpha=3.0, rslora=True, targets=("k", "o", "mlp_out")),
                 {"use_rslora": True}, id="rslora"),
    pytest.param(_cat_unequal_ranks, {"rank_pattern": {f"blocks.{l}.attn.W_V": 4 for l in (0, 1)}},
                 id="cat,rank_pattern"),
    pytest.param(_cat_no_product, {"target_modules": ["blocks.0.attn.W_Q", "blocks.1.mlp.W_out"]},
                 id="cat,explicit-paths"),
])
def test_toy_gpt_adapter_loads_in_peft(gpt, idx, tmp_path, make, expect):
    """save_adapter -> PeftModel.from_pretrained(toy GPT) adapts exactly our modules and gives
    the logits of our unmerged LoRA and of our merged model."""
    adapter = make(gpt)
    save_adapter(adapter, tmp_path, task_type=peft_task_type(gpt))
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["task_type"] is None and {k: meta[k] for k in expect} == expect
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(gpt), tmp_path).eval()
    assert type(loaded) is peft.PeftModel
    assert _lora_paths(loaded) == set(adapter.paths)
    with torch.no_grad():
        ours, theirs = apply_adapter(gpt, adapter)(idx), loaded(idx)
        assert (ours - gpt(idx)).abs().max() > 1e-2  # the adapter does something
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs, merge_into_new_model(gpt, adapter)(idx), atol=1e-5, rtol=0)


@pytest.mark.parametrize("rslora", [pytest.param(False, id="plain"), pytest.param(True, id="rslora")])
def test_peft_trained_on_toy_gpt_loads_in_ours(gpt, idx, tmp_path, rslora):
    """PEFT's own toy-GPT adapter folder (layers_pattern, rank_pattern, nonzero B) -> load_adapter
    -> apply_adapter gives PEFT's logits."""
    config = peft.LoraConfig(r=2, lora_alpha=5, target_modules=["W_K", "W_out"], layers_to_transform=[1],
                             layers_pattern="blocks", use_rslora=rslora, rank_pattern={"blocks.1.mlp.W_out": 3})
    model = _peft_trained(gpt, config, tmp_path)
    adapter = load_adapter(tmp_path, gpt, role_modules(gpt))
    assert set(adapter.paths) == {"blocks.1.attn.W_K", "blocks.1.mlp.W_out"}
    assert adapter.factors["blocks.1.mlp.W_out"].rank == 3 and adapter.config.layers == (1,)
    with torch.no_grad():
        torch.testing.assert_close(apply_adapter(gpt, adapter)(idx), model(idx), atol=1e-5, rtol=0)
