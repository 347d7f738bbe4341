"""Reuse methods: merge algebra against dense oracles, identities for one adapter, routing."""
import copy

import numpy as np
import pytest
import torch

from theory import merge
from theory.routing import routed_output
from toymodels import peft_merges, reuse
from toymodels.adapters import Adapter, apply_adapter, random_adapter
from toymodels.lora import LoRAConfig
from toymodels.model import GPT, role_modules
from toymodels.routing import (ArrowRouter, OracleRouter, RoutedLinear, arrow_model, oracle_model,
                               oracle_weights, routing_weights, set_oracle_weights)
from conftest import TINY_GPT, seeded as gen

MODEL = TINY_GPT
TARGETS = ("q", "v", "mlp_out")


@pytest.fixture(scope="module")
def base() -> GPT:
    return GPT(MODEL, generator=gen(0))


def idx(B: int = 3) -> torch.Tensor:
    return torch.randint(0, MODEL.d_vocab, (B, 6), generator=gen(1))


def make_adapter(base, seed, **cfg) -> Adapter:
    cfg = {"rank": 2, "alpha": 4.0, "targets": TARGETS, **cfg}
    return random_adapter(base, LoRAConfig(**cfg), role_modules(base), gen(seed))


@pytest.fixture(scope="module")
def experts(base) -> list[Adapter]:
    """Three NONZERO adapters with different ranks and scalings (one rsLoRA)."""
    return [make_adapter(base, 1, rank=2), make_adapter(base, 2, rank=3, rslora=True),
            make_adapter(base, 3, rank=2, alpha=1.0)]


def assert_deltas(adapter: Adapter, expected: dict[str, torch.Tensor], atol=1e-6):
    assert set(adapter.paths) == set(expected)
    for path, delta in expected.items():
        torch.testing.assert_close(adapter.factors[path].delta, delta, atol=atol, rtol=1e-5, msg=path)


def dense(experts, weights):
    return {p: sum(w * e.factors[p].delta for w, e in zip(weights, experts)) for p in experts[0].paths}


def test_merge1_cat_average_and_sum_are_the_exact_weighted_delta_sum(experts):
    weights = [0.5, -1.0, 2.0]
    assert_deltas(reuse.cat(experts, weights), dense(experts, weights))
    assert_deltas(reuse.average(experts), dense(experts, [1 / 3] * 3))
    assert_deltas(reuse.task_arithmetic(experts), dense(experts, [1.0] * 3))
    assert reuse.cat(experts).factors["blocks.0.attn.W_Q"].rank == 2 + 3 + 2


def test_merge3_factor_average_differs_by_exactly_the_cross_terms(base):
    """Unequal alphas (scales 0.5, 2, 4) and a negative weight: PEFT linear's math per module."""
    experts = [make_adapter(base, s, rank=2, alpha=a) for s, a in ((1, 1.0), (2, 4.0), (3, 8.0))]  # equal ranks
    weights = [0.2, -0.3, 0.5]
    merged = reuse.factor_average(experts, weights)
    for path in experts[0].paths:
        fs = [e.factors[path] for e in experts]
        gap = merged.factors[path].delta - merge.weighted_delta_sum(fs, weights)
        torch.testing.assert_close(gap, merge.cross_terms(fs, weights), atol=1e-6, rtol=1e-5)
        assert gap.abs().max() > 1e-4  # the cross terms are really there


def test_merge2_svd_error_is_the_eckart_young_error(experts):
    merged, target = reuse.svd(experts, rank=2, weights=[1.0, 1.0, 1.0]), dense(experts, [1.0] * 3)
    for path, delta in target.items():
        error = torch.linalg.matrix_norm(merged.factors[path].delta - delta).item()
        assert error == pytest.approx(merge.eckart_young_error(delta, 2), rel=1e-4)
        assert error > 1e-4  # rank 7 truncated to 2: not exact


def test_ties_and_dare_with_rank_none_are_exact_factorisations(experts):
    deltas = {p: merge.ties([e.factors[p].delta for e in experts], None, 0.3) for p in experts[0].paths}
    assert_deltas(reuse.ties(experts, density=0.3), deltas, atol=0)
    a, b = reuse.dare(experts, 0.5, gen(7)), reuse.dare(experts, 0.5, gen(7))
    assert_deltas(a, b.deltas(), atol=0)
    g = gen(7)  # DARE draws in path order, then adapter order
    expected = {p: sum(merge.dare(e.factors[p].delta, 0.5, g) for e in experts) for p in experts[0].paths}
    assert_deltas(a, expected)


def test_lorahub_combine_is_the_factor_product_for_any_sign(experts):
    base_experts = [experts[0], experts[2]]  # equal ranks
    w = [0.7, -1.2]
    merged = reuse.lorahub_combine(base_experts, w)
    for path in base_experts[0].paths:
        fs = [e.factors[path] for e in base_experts]
        A = sum(wi * f.scale * f.A for wi, f in zip(w, fs))  # LoraHub: A = sum w_i A_i
        B = sum(wi * f.B for wi, f in zip(w, fs))
        torch.testing.assert_close(merged.factors[path].delta, B @ A, atol=1e-6, rtol=1e-5)


def test_lorahub_search_is_seeded_and_lowers_the_objective(base, experts):
    pair = [experts[0], experts[2]]
    target = apply_adapter(base, pair[0])(idx()).detach()

    @torch.no_grad()
    def loss_fn(model):
        return float((model(idx()) - target).square().mean())

    w1 = reuse.lorahub_search(base, pair, loss_fn, np.random.default_rng(0), budget=25, l1=0.0)
    w2 = reuse.lorahub_search(base, pair, loss_fn, np.random.default_rng(0), budget=25, l1=0.0)
    np.testing.assert_array_equal(w1, w2)
    start = loss_fn(reuse.merge_into_new_model(base, reuse.lorahub_combine(pair, [0.5, 0.5])))
    assert loss_fn(reuse.merge_into_new_model(base, reuse.lorahub_combine(pair, w1.tolist()))) < start


IDENTITY_OPTIONS = {
    "average": {}, "sum": {}, "task_arithmetic": {"weights": [1.0]}, "cat": {"weights": [1.0]},
    "svd": {"rank": 3}, "ties": {"density": 1.0}, "dare": {"drop_rate": 0.0, "generator": gen(0)},
    "factor_average": {"weights": [1.0]}, "arrow": {"top_k": 1}, "oracle": {},
}


@pytest.mark.parametrize("rslora", [pytest.param(False, id="alpha/r"), pytest.param(True, id="rslora")])
@pytest.mark.parametrize("method", list(IDENTITY_OPTIONS))
def test_one_adapter_with_weight_one_returns_itself(base, method, rslora):
    adapter = make_adapter(base, 4, rank=3, rslora=rslora)
    model = reuse.reuse(method, base, [adapter], **IDENTITY_OPTIONS[method])
    torch.testing.assert_close(model(idx()), apply_adapter(base, adapter)(idx()), atol=1e-5, rtol=1e-5)


def test_every_registered_method_has_an_identity_check_or_a_reason():
    # lorahub: searched weights; peft_*: tests/test_peft_merges.py (identity for plain LoRA,
    # PEFT's sqrt(r) for rsLoRA recorded)
    assert set(reuse.METHODS) == set(IDENTITY_OPTIONS) | {"lorahub"} | {f"peft_{t}" for t in peft_merges.COMBINATION_TYPES}
    assert reuse.DEFAULT_METHODS == tuple(m for m in reuse.METHODS if not m.startswith("peft_"))


def test_routed_model_with_one_hot_oracle_weights_is_each_experts_model(base, experts):
    model = oracle_model(base, experts)
    chosen = torch.tensor([2, 0, 1])
    set_oracle_weights(model, oracle_weights(chosen, 3))
    out = model(idx())
    for b, i in enumerate(chosen.tolist()):
        expected = apply_adapter(base, experts[i])(idx())[b]
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=1e-5)


def test_routed_linear_matches_the_dense_routed_output_of_theory(experts):
    path = "blocks.1.mlp.W_out"
    bank = [e.factors[path] for e in experts]
    base_map = torch.nn.Linear(32, 16, bias=False)
    layer = RoutedLinear(base_map, bank, ArrowRouter(bank, top_k=2, temperature=0.5))
    x = torch.randn(2, 5, 32, generator=gen(3))
    weights = layer.router(x)
    expected = base_map(x) + routed_output(x, [f.delta for f in bank], weights)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("top_k", [pytest.param(1, id="k=1"), pytest.param(2, id="k=2")])
def test_arrow_weights_are_top_k_distributions_exposed_per_layer(base, experts, top_k):
    model = arrow_model(base, experts, top_k=top_k, temperature=0.1)
    model(idx())
    weights = routing_weights(model)
    assert set(weights) == set(experts[0].paths)
    for w in weights.values():
        assert w.shape == (3, 6, 3)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 6))
        assert torch.all((w > 0).sum(-1) == top_k)


def test_arrow_prototype_routes_an_experts_own_direction_to_it(experts):
    path = "blocks.0.attn.W_Q"
    bank = [e.factors[path] for e in experts]
    router = ArrowRouter(bank, top_k=1)
    x = router.prototypes[1].reshape(1, 1, -1)  # (B=1, T=1, d_in)
    assert router(x)[0, 0].argmax().item() == 1


def test_invalid_reuse_arguments_name_value_and_allowed(base, experts):
    with pytest.raises(ValueError, match=r"reuse method 'mean': must be one of average, sum, task_arithmetic, cat"):
        reuse.reuse("mean", base, experts)
    with pytest.raises(ValueError, match=r"top_k=4: must be in \[1, 3\] \(the bank has 3 adapters\)"):
        arrow_model(base, experts, top_k=4)
    with pytest.raises(ValueError, match=r"weights has 2 entries for 3 adapters"):
        reuse.cat(experts, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"drop_rate=1.0: must be in \[0, 1\)"):
        reuse.dare(experts, 1.0, gen(0))
    model = oracle_model(base, experts)
    with pytest.raises(ValueError, match=r"weights have 2 columns: the bank has 3 adapters"):
        set_oracle_weights(model, torch.ones(2))
    assert isinstance(next(m for m in model.modules() if isinstance(m, OracleRouter)), OracleRouter)


def test_adapters_on_different_modules_merge_over_the_union(base):
    a = make_adapter(base, 1, targets=("q",))
    b = make_adapter(base, 2, targets=("mlp_out",), layers=(1,))
    merged = reuse.task_arithmetic([a, b])
    expected = {**a.deltas(), **b.deltas()}
    assert_deltas(merged, expected)
    assert merged.config.targets == ("q", "mlp_out") and merged.config.layers is None
    with pytest.raises(ValueError, match="same module paths"):
        arrow_model(base, [a, b])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_merged_and_routed_models_give_the_same_logits_on_cuda(base, experts):
    x = idx()
    for method, options in [("cat", {}), ("svd", {"rank": 2}), ("arrow", {"top_k": 2})]:
        model = reuse.reuse(method, base, experts, **options)
        cpu = model(x)
        torch.testing.assert_close(model.to("cuda")(x.to("cuda")).cpu(), cpu, atol=1e-4, rtol=1e-4)
    lora = apply_adapter(copy.deepcopy(base).to("cuda"), experts[0])
    assert all(p.device.type == "cuda" for p in lora.parameters())


def test_data_free_methods_are_every_default_method_but_the_ones_that_see_task_data():
    # LoraHub tunes on composed examples and the oracle picks per eval set; all else sees only
    # the adapters. The experiments' claims read this one tuple (a new method needs no edit there).
    assert reuse.DATA_FREE == ("average", "sum", "task_arithmetic", "cat", "ties", "dare", "svd",
                               "factor_average", "arrow")
    assert set(reuse.DATA_FREE) | set(reuse.USES_TASK_DATA) == set(reuse.DEFAULT_METHODS)
    from analysis.experiments import code_reuse, math_reuse, pretrained_claims, qa_reuse, two_hop_read
    for module in (code_reuse, math_reuse, pretrained_claims, qa_reuse, two_hop_read):
        assert module.DATA_FREE is reuse.DATA_FREE, module.__name__
