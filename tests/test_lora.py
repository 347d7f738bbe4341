"""Hand-written LoRA: init, forward against a dense oracle, scale, generic injection, validation."""
import math

import pytest
import torch
from torch import nn

from toymodels.config import apply_overrides
from toymodels.lora import LoRAConfig, LoRALinear, inject_lora, lora_modules, target_paths
from toymodels.model import GPT, role_modules
from conftest import TINY_GPT, seeded as gen

MODEL = TINY_GPT


@pytest.fixture(scope="module")
def base() -> GPT:
    return GPT(MODEL, generator=gen(0))


def idx() -> torch.Tensor:
    return torch.randint(0, MODEL.d_vocab, (3, 6), generator=gen(1))


@pytest.mark.parametrize("init", ["kaiming_uniform", "gaussian"])
def test_delta_is_zero_at_init_and_model_equals_base(base, init):
    """Notation contract: default init B = 0, A random, so delta = 0."""
    model = inject_lora(base, LoRAConfig(rank=2, init=init), role_modules(base), gen(2))
    for m in lora_modules(model).values():
        assert torch.all(m.B == 0) and m.A.abs().sum() > 0
        assert torch.all(m.factors.delta == 0)
    torch.testing.assert_close(model(idx()), base(idx()))


def test_init_distributions_match_loralib_and_peft():
    lin = nn.Linear(400, 300, bias=False)
    kaiming, gaussian = LoRALinear(lin, 8, 1.0), LoRALinear(lin, 8, 1.0)
    kaiming.reset_parameters("kaiming_uniform", gen(0))
    gaussian.reset_parameters("gaussian", gen(0))
    bound = 1 / math.sqrt(400)  # kaiming_uniform with a=sqrt(5): nn.Linear's default bound
    assert kaiming.A.abs().max() <= bound and kaiming.A.abs().max() > 0.95 * bound
    assert gaussian.A.std().item() == pytest.approx(1 / 8, rel=0.05)


@pytest.mark.parametrize("rslora,expected", [pytest.param(False, 6 / 4, id="alpha/r"),
                                             pytest.param(True, 6 / 2, id="rslora:alpha/sqrt(r)")])
def test_forward_equals_dense_oracle_with_nonzero_B(rslora, expected):
    cfg = LoRAConfig(rank=4, alpha=6.0, rslora=rslora)
    assert cfg.scale == expected
    base = nn.Linear(8, 5)  # with a bias: LoRA leaves it alone
    lora = LoRALinear(base, cfg.rank, cfg.scale)
    lora.reset_parameters(cfg.init, gen(0))
    with torch.no_grad():
        lora.B.normal_(generator=gen(1))
    x = torch.randn(2, 3, 8, generator=gen(2))
    W = base.weight + expected * lora.B @ lora.A  # (d_out, d_in)
    torch.testing.assert_close(lora(x), x @ W.T + base.bias)
    assert lora.weight is base.weight and not base.weight.requires_grad


def test_inject_returns_new_model_and_trains_only_factors(base):
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = LoRAConfig(rank=2, targets=("v", "mlp_out"), layers=(1,))
    model = inject_lora(base, cfg, role_modules(base), gen(0))
    assert not lora_modules(base)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert set(lora_modules(model)) == {"blocks.1.attn.W_V", "blocks.1.mlp.W_out"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{p}.{ab}" for p in lora_modules(model) for ab in "AB"}
    model(idx()).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)


def test_injection_is_deterministic_given_the_generator(base):
    cfg = LoRAConfig(rank=2)
    a, b = (inject_lora(base, cfg, role_modules(base), gen(5)) for _ in range(2))
    assert all(torch.equal(x.A, y.A) for x, y in zip(lora_modules(a).values(), lora_modules(b).values()))


def test_injection_is_generic_over_role_maps():
    """The pretrained loader passes its own map, e.g. Llama-style names and roles."""
    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.down_proj = nn.Linear(8, 8, bias=False), nn.Linear(12, 8, bias=False)

    model = nn.Module()
    model.layers = nn.ModuleList([Layer(), Layer()])
    role_map = {(role, l): f"layers.{l}.{role}_proj" for l in range(2) for role in ("q", "down")}
    new = inject_lora(model, LoRAConfig(rank=3, targets=("down",)), role_map, gen(0))
    assert set(lora_modules(new)) == {"layers.0.down_proj", "layers.1.down_proj"}
    assert new.layers[0].down_proj.A.shape == (3, 12) and new.layers[0].down_proj.B.shape == (8, 3)


def test_cli_overrides_reach_tuple_and_optional_fields():
    cfg = apply_overrides(LoRAConfig(), ["targets=q,v", "layers=0,1", "rslora=true", "rank=2"])
    assert cfg == LoRAConfig(rank=2, rslora=True, targets=("q", "v"), layers=(0, 1))
    assert apply_overrides(cfg, ["layers=none"]).layers is None
    assert cfg.key() != LoRAConfig().key()


@pytest.mark.parametrize("kwargs,match", [
    pytest.param(dict(rank=0), r"lora\.rank=0: must be an integer >= 1", id="rank=0"),
    pytest.param(dict(dropout=1.0), r"lora\.dropout=1\.0: must be in \[0, 1\)", id="dropout=1"),
    pytest.param(dict(alpha=0.0), r"lora\.alpha=0\.0: must be > 0", id="alpha=0"),
    pytest.param(dict(targets=()), r"lora\.targets=\(\): must be a non-empty", id="no targets"),
    pytest.param(dict(targets=("q", "v", "q")), r"lora\.targets=\('q', 'v', 'q'\): must be .* distinct roles",
                 id="repeated target"),
    pytest.param(dict(rank=2.0), r"lora\.rank=2\.0: must be an integer >= 1", id="rank float"),
    pytest.param(dict(init="orthogonal"), r"lora\.init='orthogonal': must be one of kaiming_uniform, gaussian",
                 id="init"),
])
def test_invalid_lora_config_names_field_value_and_allowed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRAConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    pytest.param(dict(rank=17, targets=("q",)), r"lora\.rank=17: must be in \[1, 16\].*blocks\.0\.attn\.W_Q",
                 id="rank>d_model"),
    pytest.param(dict(targets=("q", "gate")), r"lora\.targets contains \['gate'\]: roles of this model are q, k",
                 id="unknown role"),
    pytest.param(dict(layers=(2,)), r"lora\.layers contains \[2\]: layers of this model are \[0, 1\]",
                 id="layer 2 of 2"),
])
def test_invalid_injection_names_field_value_and_allowed(base, kwargs, match):
    with pytest.raises(ValueError, match=match):
        inject_lora(base, LoRAConfig(**kwargs), role_modules(base), gen(0))


def test_rank_at_the_limit_is_allowed(base):
    paths = target_paths(LoRAConfig(rank=16, targets=("mlp_in",)), role_modules(base))
    model = inject_lora(base, LoRAConfig(rank=16, targets=("mlp_in",)), role_modules(base), gen(0))
    assert [lora_modules(model)[p].A.shape for p in paths] == [(16, 16)] * 2
