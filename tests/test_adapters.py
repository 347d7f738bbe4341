"""Adapters as data: extract/apply, merge == unmerged, unmerge, PEFT format, save/load."""
import json

import pytest
import torch
from safetensors.torch import load_file

from theory.merge import Factors
from toymodels import reuse
from toymodels.adapters import Adapter, apply_adapter, extract_adapter, merge_into_new_model, random_adapter, unmerge
from toymodels.peft_checkpoint import load_adapter, peft_task_type, save_adapter
from toymodels.lora import LoRAConfig, inject_lora
from toymodels.model import GPT, ModelConfig, role_modules
from conftest import TINY_GPT, seeded as gen

MODEL = TINY_GPT


@pytest.fixture(scope="module")
def base() -> GPT:
    return GPT(MODEL, generator=gen(0))


def idx() -> torch.Tensor:
    return torch.randint(0, MODEL.d_vocab, (3, 6), generator=gen(1))


def make_adapter(base, seed=3, **cfg) -> Adapter:
    return random_adapter(base, LoRAConfig(**{"rank": 2, **cfg}), role_modules(base), gen(seed))


def test_random_adapter_is_nonzero_and_extract_apply_round_trips(base):
    adapter = make_adapter(base)
    assert all(f.delta.abs().sum() > 0 for f in adapter.factors.values())
    model = apply_adapter(base, adapter)
    again = extract_adapter(model, adapter.config)
    assert again.paths == adapter.paths
    assert all(torch.equal(again.factors[p].B, adapter.factors[p].B) for p in adapter.paths)
    assert not torch.allclose(model(idx()), base(idx()))


def test_extract_after_inject_reads_the_trained_factors(base):
    cfg = LoRAConfig(rank=2, targets=("q",))
    model = inject_lora(base, cfg, role_modules(base), gen(0))
    with torch.no_grad():
        model.blocks[0].attn.W_Q.B.fill_(0.5)
    adapter = extract_adapter(model, cfg)
    assert torch.all(adapter.factors["blocks.0.attn.W_Q"].B == 0.5)
    assert adapter.factors["blocks.0.attn.W_Q"].scale == cfg.scale


@pytest.mark.parametrize("rslora", [pytest.param(False, id="alpha/r"), pytest.param(True, id="rslora")])
@pytest.mark.parametrize("weight", [pytest.param(1.0, id="w=1"), pytest.param(0.3, id="w=0.3")])
def test_merged_logits_equal_unmerged_logits(base, rslora, weight):
    adapter = make_adapter(base, rank=3, alpha=5.0, rslora=rslora)
    scaled = Adapter(adapter.config, {p: Factors(f.A, weight * f.B, f.scale) for p, f in adapter.factors.items()})
    merged = merge_into_new_model(base, adapter, weight)
    assert not any("A" in n for n, _ in merged.named_parameters())  # plain nn.Linear again
    torch.testing.assert_close(merged(idx()), apply_adapter(base, scaled)(idx()), atol=1e-5, rtol=1e-5)


def test_merge_leaves_base_untouched_and_unmerge_inverts_it(base):
    before = base(idx())
    adapter = make_adapter(base)
    merged = merge_into_new_model(base, adapter)
    torch.testing.assert_close(base(idx()), before, atol=0, rtol=0)
    restored = unmerge(merged, adapter)
    for (name, p), q in zip(base.named_parameters(), restored.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0, msg=name)


def test_peft_keys_shapes_and_config_follow_the_convention(base, tmp_path):
    adapter = make_adapter(base, rank=2, alpha=4.0, targets=("q", "mlp_in"), layers=(1,))
    save_adapter(adapter, tmp_path, base_model_name_or_path="toy-gpt")
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert set(tensors) == {f"base_model.model.blocks.1.{m}.lora_{ab}.weight"
                            for m in ("attn.W_Q", "mlp.W_in") for ab in "AB"}
    assert tensors["base_model.model.blocks.1.mlp.W_in.lora_A.weight"].shape == (2, 16)  # (r, d_in)
    assert tensors["base_model.model.blocks.1.mlp.W_in.lora_B.weight"].shape == (32, 2)  # (d_out, r)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["task_type"] is None  # a plain PeftModel: GPT has no generate()
    assert (meta["r"], meta["lora_alpha"], meta["use_rslora"], meta["lora_dropout"]) == (2, 4.0, False, 0.0)
    assert meta["target_modules"] == ["W_Q", "W_in"] and meta["layers_to_transform"] == [1]
    assert meta["layers_pattern"] == "blocks"  # PEFT reads the layer index after this name
    assert (meta["bias"], meta["fan_in_fan_out"], meta["init_lora_weights"]) == ("none", False, True)
    assert meta["base_model_name_or_path"] == "toy-gpt"
    assert meta["rank_pattern"] == {} and meta["alpha_pattern"] == {}


def test_save_refuses_bad_task_type_and_empty_adapter_writing_nothing(base, tmp_path):
    assert peft_task_type(base) is None
    with pytest.raises(ValueError, match=r"task_type='causal': must be one of .*peft_task_type\(model\)"):
        save_adapter(make_adapter(base), tmp_path / "a", task_type="causal")
    with pytest.raises(ValueError, match="adapter has no modules"):
        save_adapter(Adapter(LoRAConfig()), tmp_path / "b")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("rslora", [pytest.param(False, id="alpha/r"), pytest.param(True, id="rslora")])
def test_save_load_round_trip(base, tmp_path, rslora):
    adapter = make_adapter(base, rank=3, alpha=6.0, rslora=rslora, dropout=0.1, targets=("k", "o", "mlp_out"))
    loaded = load_adapter(save_adapter(adapter, tmp_path), base, role_modules(base))
    assert loaded.config == adapter.config
    for path, f in adapter.factors.items():
        g = loaded.factors[path]
        assert torch.equal(g.A, f.A) and torch.equal(g.B, f.B) and g.scale == pytest.approx(f.scale)


def test_round_trip_of_a_merged_adapter_with_per_module_ranks(base, tmp_path):
    """cat of ranks 2 and 3 on q, but only rank 2 on v: PEFT's rank_pattern/alpha_pattern."""
    a = make_adapter(base, seed=1, rank=2, targets=("q", "v"))
    b = make_adapter(base, seed=2, rank=3, targets=("q",))
    merged = reuse.cat([a, b], [0.5, 2.0])
    save_adapter(merged, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["r"] == 5 and meta["rank_pattern"] == {"blocks.0.attn.W_V": 4, "blocks.1.attn.W_V": 4}
    loaded = load_adapter(tmp_path, base, role_modules(base))
    for path, f in merged.factors.items():
        torch.testing.assert_close(loaded.factors[path].delta, f.delta, atol=0, rtol=0)
    torch.testing.assert_close(merge_into_new_model(base, loaded)(idx()), merge_into_new_model(base, merged)(idx()))


def test_shape_mismatch_names_module_expected_and_found(base, tmp_path):
    save_adapter(make_adapter(base, targets=("mlp_in",)), tmp_path)
    wider = GPT(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=24, d_vocab=11, n_ctx=6), generator=gen(0))
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.W_in: base weight is \(d_out, d_in\)=\(24, 16\), "
                                         r"so expected A \(r, 16\) and B \(24, r\); found A \(2, 16\), B \(32, 2\)"):
        load_adapter(tmp_path, wider, role_modules(wider))


def test_unknown_module_path_raises(base, tmp_path):
    save_adapter(make_adapter(base, targets=("v",)), tmp_path)
    deeper_map = {k: v for k, v in role_modules(base).items() if k[0] != "v"}
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.W_V: not in the role map"):
        load_adapter(tmp_path, base, deeper_map)


def _with_entry(adapter: Adapter, value: float) -> tuple[Adapter, str]:
    """``adapter`` with ``B[0, 0] = value`` in its first module (a NaN/Inf the checks must see)."""
    path = adapter.paths[0]
    f = adapter.factors[path]
    B = f.B.clone()
    B[0, 0] = value
    return Adapter(adapter.config, {**adapter.factors, path: Factors(f.A, B, f.scale)}), path


def test_merge_and_apply_refuse_nonfinite_unless_told(base):
    """PEFT's safe_merge idea: a NaN/Inf delta is refused, naming the module, before it reaches
    a weight; ``check_finite=False`` merges it (and then the weight is NaN: the opt-out is real)."""
    bad, path = _with_entry(make_adapter(base, targets=("q", "v")), float("nan"))
    with pytest.raises(ValueError, match=rf"module {path}: merged delta \(weight 1.0\) holds 16 NaN and 0 Inf of 256"):
        merge_into_new_model(base, bad)  # delta (16, 16): a NaN in B[0, 0] spoils all of row 0
    with pytest.raises(ValueError, match=rf"module {path}: lora_B holds 1 NaN and 0 Inf of 32 entries"):
        apply_adapter(base, bad)
    assert torch.isnan(merge_into_new_model(base, bad, check_finite=False).get_submodule(path).weight).any()
    assert torch.isnan(apply_adapter(base, bad, check_finite=False)(idx())).any()
    f = bad.factors[bad.paths[1]]  # finite factors whose merged delta overflows float32
    huge = Adapter(bad.config, {bad.paths[1]: Factors(1e20 * f.A, 1e20 * f.B, f.scale)})
    with pytest.raises(ValueError, match="Inf"):
        merge_into_new_model(base, huge)


def test_loading_refuses_nonfinite_tensors_unless_told(base, tmp_path):
    bad, path = _with_entry(make_adapter(base, targets=("k",)), float("inf"))
    save_adapter(bad, tmp_path)
    with pytest.raises(ValueError, match=rf"lora_B.weight holds 0 NaN and 1 Inf"):
        load_adapter(tmp_path, base, role_modules(base))
    loaded = load_adapter(tmp_path, base, role_modules(base), check_finite=False)
    assert torch.isinf(loaded.factors[path].B).sum() == 1


def test_config_rank_must_match_the_tensors(base, tmp_path):
    """PEFT refuses a checkpoint whose r (or rank_pattern) disagrees with lora_A's rows; so do we,
    instead of silently scaling by alpha / (the tensor's rank)."""
    save_adapter(make_adapter(base, rank=2, alpha=4.0, targets=("q",)), tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    for change, words in (({"r": 4}, "r gives module blocks.0.attn.W_Q rank 4"),
                          ({"rank_pattern": {"W_Q": 3}}, "rank_pattern gives module blocks.0.attn.W_Q rank 3")):
        (tmp_path / "adapter_config.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(ValueError, match=words):
            load_adapter(tmp_path, base, role_modules(base))
    (tmp_path / "adapter_config.json").write_text(json.dumps({**meta, "rank_pattern": {"W_Q": 2},
                                                              "layers_to_transform": 0}))
    assert load_adapter(tmp_path, base, role_modules(base)).config.layers == (0,)  # PEFT's int form loads
