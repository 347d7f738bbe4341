"""Our adapter files are PEFT LoRA checkpoints, both ways, on a tiny random Llama.

Oracle: PEFT itself (``PeftModel.from_pretrained`` / ``get_peft_model``). Every adapter is
NONZERO (random A and B), so equal logits mean equal deltas."""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from toymodels.adapters import apply_adapter, load_adapter, random_adapter, save_adapter  # noqa: E402
from toymodels.lora import LoRAConfig  # noqa: E402
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


@pytest.mark.parametrize("cfg", [
    pytest.param(LoRAConfig(rank=2, alpha=4.0, targets=("q", "v")), id="r=2,qv"),
    pytest.param(LoRAConfig(rank=4, alpha=3.0, rslora=True, targets=("o", "gate", "down"), layers=(1,)),
                 id="r=4,rslora,mlp,layer1"),
])
def test_ours_loads_in_peft(base, tokens, tmp_path, cfg):
    """save_adapter -> PeftModel.from_pretrained gives the logits of our unmerged LoRA."""
    adapter = random_adapter(base, cfg, llama_role_map(base), torch.Generator().manual_seed(2), B_std=0.3)
    save_adapter(adapter, tmp_path)
    ours = _logits(apply_adapter(base, adapter), tokens)
    theirs = _logits(peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval(), tokens)
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
    torch.manual_seed(3)  # PEFT draws its init from the global RNG; tests may seed it
    model = peft.get_peft_model(copy.deepcopy(base), config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    model.save_pretrained(tmp_path)
    adapter = load_adapter(tmp_path, base, llama_role_map(base))
    assert adapter.factors["model.layers.0.mlp.up_proj"].rank == 3
    assert set(adapter.config.targets) == {"k", "up"}
    torch.testing.assert_close(_logits(apply_adapter(base, adapter), tokens), _logits(model, tokens),
                               atol=1e-4, rtol=0)
