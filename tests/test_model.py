"""The toy GPT: shapes, causality, activation cache, init, role map, config validation."""
import pytest
import torch
from torch import nn

from toymodels.model import GPT, ROLES, ActivationCache, ModelConfig, role_modules

CFG = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, d_vocab=11, n_ctx=6)


def make(seed: int = 0) -> GPT:
    return GPT(CFG, generator=torch.Generator().manual_seed(seed))


def tokens(seed: int = 1, B: int = 3, T: int = 6) -> torch.Tensor:
    return torch.randint(0, CFG.d_vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def test_logits_shape_and_cache_shapes():
    cache = ActivationCache()
    logits = make()(tokens(T=5), cache=cache)
    assert logits.shape == (3, 5, CFG.d_vocab)
    assert len(cache.resid) == CFG.n_layers + 1
    assert all(r.shape == (3, 5, CFG.d_model) for r in cache.resid)
    assert [p.shape for p in cache.attn_pattern] == [(3, CFG.n_heads, 5, 5)] * CFG.n_layers
    assert [k.shape for k in cache.mlp_keys] == [(3, 5, CFG.d_mlp)] * CFG.n_layers


def test_cache_is_refilled_not_appended_and_patterns_are_causal_distributions():
    model, cache = make(), ActivationCache()
    model(tokens(), cache=cache)
    model(tokens(seed=2), cache=cache)
    assert len(cache.resid) == CFG.n_layers + 1
    pattern = cache.attn_pattern[0]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
    assert torch.all(pattern.triu(diagonal=1) == 0)


def test_causal_future_tokens_do_not_change_past_logits():
    model, idx = make(), tokens()
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % CFG.d_vocab
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_generator_makes_init_deterministic_and_nanogpt_scaled():
    a, b, c = make(0), make(0), make(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.W_E.weight, c.W_E.weight)
    big = GPT(ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, d_vocab=200),
              generator=torch.Generator().manual_seed(0))
    assert big.W_E.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert big.blocks[0].mlp.W_out.weight.std().item() == pytest.approx(0.02 / 2, rel=0.1)


def test_role_modules_resolve_to_linear_maps_of_the_right_shape():
    model = make()
    paths = role_modules(model)
    assert set(paths) == {(r, l) for r in ROLES for l in range(CFG.n_layers)}
    expected = {"q": (16, 16), "k": (16, 16), "v": (16, 16), "o": (16, 16),
                "mlp_in": (32, 16), "mlp_out": (16, 32)}
    for (role, _), path in paths.items():
        module = model.get_submodule(path)
        assert isinstance(module, nn.Linear) and module.bias is None
        assert tuple(module.weight.shape) == expected[role]


def test_too_long_sequence_raises():
    with pytest.raises(ValueError, match="n_ctx=6"):
        make()(tokens(T=7))


@pytest.mark.parametrize("field,value,match", [
    pytest.param("d_model", 15, "divisible", id="d_model%n_heads"),
    pytest.param("n_layers", 0, ">= 1", id="n_layers=0"),
    pytest.param("d_vocab", -3, ">= 1", id="d_vocab<0"),
    pytest.param("n_heads", 0, "an integer >= 1", id="n_heads=0 (before the divisibility check)"),
    pytest.param("n_ctx", 8.0, "an integer >= 1", id="n_ctx float"),
])
def test_invalid_model_config_names_field_value_and_allowed(field, value, match):
    with pytest.raises(ValueError, match=match) as info:
        ModelConfig(**{field: value})
    assert f"model.{field}={value}" in str(info.value)
