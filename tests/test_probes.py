"""Mechanism probes: each against an independent oracle (the model's own logits, modules
applied by hand, dense float64 algebra, theory.routing) or a planted signal, two-sided."""
import pytest
import torch
import torch.nn.functional as F

from theory.merge import Factors
from theory.routing import arrow_weights
from toymodels import reuse
from toymodels.adapters import Adapter, apply_adapter, merge_into_new_model, random_adapter
from toymodels.lora import LoRAConfig
from toymodels.model import GPT, ActivationCache, ModelConfig, role_modules
from toymodels.probes import (adapter_keys, delta_readout, fit_probe, key_overlap, linear_probe, logit_lens,
                              map_inputs, probe_layers, prompt_end, router_heatmap, split_indices,
                              t2_key_overlap, target_rank)
from toymodels.routing import RoutedLinear
from toymodels.tasks import Examples
from conftest import seeded as gen

MODEL = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, d_vocab=20, n_ctx=6)
TARGETS = ("q", "v", "mlp_out")


@pytest.fixture(scope="module")
def base() -> GPT:
    return GPT(MODEL, generator=gen(0)).eval()


@pytest.fixture(scope="module")
def experts(base) -> list[Adapter]:
    cfg = LoRAConfig(rank=2, alpha=4.0, targets=TARGETS)
    return [random_adapter(base, cfg, role_modules(base), gen(10 + i), B_std=0.5) for i in range(3)]


@pytest.fixture(scope="module")
def models(base, experts) -> dict:
    """Every kind of model the probes must read: NONZERO adapters throughout."""
    return {"base": base, "unmerged": apply_adapter(base, experts[0]).eval(),
            "merged": reuse.reuse("average", base, experts).eval(),
            "routed": reuse.reuse("arrow", base, experts, top_k=2).eval()}


def tokens(B: int, T: int = MODEL.n_ctx, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, MODEL.d_vocab, (B, T), generator=gen(seed))


# --- capture --------------------------------------------------------------------------------

def test_prompt_end_is_last_token_before_answer():
    ex = Examples(torch.tensor([[1, 5, 6, 2, 9, 3, 0], [1, 5, 6, 7, 2, 9, 3]]),
                  torch.tensor([[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1]], dtype=torch.bool))
    assert prompt_end(ex).tolist() == [3, 4]


@pytest.mark.parametrize("kind", ["base", "unmerged", "routed"])
def test_map_inputs_match_modules_applied_by_hand(models, kind):
    """Hooked inputs of q (ln_attn of resid), mlp_in (ln_mlp after attention) and mlp_out
    (= ActivationCache.mlp_keys) at per-row positions, against the cache and the modules."""
    model, idx = models[kind], tokens(4)
    pos = torch.tensor([5, 2, 0, 3])
    cache = ActivationCache()
    with torch.no_grad():
        model(idx, cache)
        block = model.blocks[1]
        mid = cache.resid[1] + block.attn(block.ln_attn(cache.resid[1]))  # (B, T, d_model)
        expect = {"blocks.1.attn.W_Q": block.ln_attn(cache.resid[1]),
                  "blocks.1.mlp.W_in": block.ln_mlp(mid), "blocks.1.mlp.W_out": cache.mlp_keys[1]}
    got = map_inputs(model, idx, pos, list(expect))
    for path, full in expect.items():
        torch.testing.assert_close(got[path], full[torch.arange(4), pos], rtol=1e-6, atol=1e-6)
    assert torch.equal(got["blocks.1.mlp.W_out"][0], cache.mlp_keys[1][0, 5])  # no truncation: bit for bit


def test_positions_out_of_range_raise(base):
    with pytest.raises(ValueError, match="position"):
        logit_lens(base, tokens(2), MODEL.n_ctx)
    with pytest.raises(ValueError, match="position"):
        logit_lens(base, tokens(2), torch.tensor([0, 1, 2]))


# --- logit lens -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["base", "unmerged", "merged", "routed"])
def test_logit_lens_last_layer_is_the_models_logits(models, kind):
    model, idx = models[kind], tokens(5)
    pos = torch.tensor([5, 0, 3, 5, 1])
    lens = logit_lens(model, idx, pos)
    assert lens.shape == (MODEL.n_layers + 1, 5, MODEL.d_vocab)
    with torch.no_grad():
        logits = model(idx)  # (B, T, d_vocab)
        embed = model.W_E(idx) + model.W_pos(torch.arange(MODEL.n_ctx))  # (B, T, d_model)
        layer0 = model.W_U(model.ln_final(embed))
    assert torch.equal(lens[-1], logits[torch.arange(5), pos])
    torch.testing.assert_close(lens[0], layer0[torch.arange(5), pos], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(lens[0], lens[-1], atol=1e-3)  # the layers do differ


def test_logit_lens_truncation_keeps_causal_logits(models):
    """An early read position feeds only a prefix; causal logits there are unchanged."""
    idx = tokens(3)
    with torch.no_grad():
        expect = models["merged"](idx)[:, 2]
    torch.testing.assert_close(logit_lens(models["merged"], idx, 2)[-1], expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logit_lens(models["merged"], idx, -1)[-1], models["merged"](idx)[:, -1].detach())


def test_target_rank_against_sorting():
    lens = torch.randn(3, 7, 12, generator=gen(2))
    target = torch.randint(0, 12, (7,), generator=gen(3))
    out = target_rank(lens, target)
    order = lens.argsort(-1, descending=True)  # (L, B, V)
    rank = (order == target[None, :, None]).int().argmax(-1)  # (L, B)
    assert torch.equal(out["rank"], rank)
    assert torch.equal(out["top1"], (lens.argmax(-1) == target).double().mean(-1))
    torch.testing.assert_close(out["prob"], torch.softmax(lens.double(), -1)[..., target].diagonal(dim1=1, dim2=2))
    assert 0 < out["top1"].max() and out["rank"].max() > 0  # both outcomes occur: not vacuous
    cands = torch.unique(torch.cat([torch.tensor([4, 5, 9]), target[:1]]))  # holds row 0's target
    sub = target_rank(lens[:, :1], target[:1], cands)
    assert sub["rank"][:, 0].tolist() == (lens[:, 0, cands] > lens[:, 0, target[0], None]).sum(-1).tolist()
    with pytest.raises(ValueError, match="candidates"):
        target_rank(lens, target, torch.tensor([20, 21]))


# --- linear probe -----------------------------------------------------------------------------

def test_linear_probe_recovers_a_planted_layer():
    """Layer 2 encodes the label linearly (class means + noise); layers 0, 1, 3 are noise:
    high held-out accuracy at layer 2 only, chance elsewhere."""
    g = gen(4)
    L, N, d, C, k = 4, 400, 8, 4, 2
    labels = torch.randint(0, C, (N,), generator=g) * 3 + 7  # arbitrary ids, not 0..C-1
    features = torch.randn(L, N, d, generator=g)  # (L, N, d)
    means = 3.0 * torch.randn(C, d, generator=g)
    features[k] += means[(labels - 7) // 3]
    train, test = split_indices(N, 0.5, gen(5))
    out = probe_layers(features, labels, train, test)
    assert out["n_classes"] == C and 0.15 < out["chance"] < 0.4 and out["uniform"] == 1 / C
    assert out["test_acc"][k] > 0.9
    for layer in (0, 1, 3):
        assert out["test_acc"][layer] < out["chance"] + 0.12, (layer, out["test_acc"])


@pytest.mark.parametrize("kind", ["merged", "routed"])
def test_linear_probe_through_models_reads_the_token_at_layer_0(models, kind):
    """resid[0] = W_E[token] + W_pos[pos] encodes the token at the read position: a probe
    for it succeeds at layer 0; a probe for labels independent of the input stays at chance."""
    idx = tokens(160, 4, seed=6)
    idx[:, 2] = torch.randint(0, 5, (160,), generator=gen(7))
    hit = linear_probe(models[kind], idx, 2, idx[:, 2], gen(8))
    assert hit["test_acc"].shape == (MODEL.n_layers + 1,)
    assert hit["test_acc"][0] > 0.95
    noise = linear_probe(models[kind], idx, 2, torch.randint(0, 5, (160,), generator=gen(9)), gen(8))
    assert noise["test_acc"].max() < noise["chance"] + 0.15, noise


def test_fit_probe_is_affine_invariant():
    """The standardisation is folded into the returned probe: shifting and scaling the
    features leaves its predictions unchanged (and still correct)."""
    g = gen(12)
    y = torch.randint(0, 3, (90,), generator=g)
    X = torch.randn(90, 5, generator=g) + 2.0 * torch.randn(3, 5, generator=g)[y]  # (N, d)
    plain = fit_probe(X, y, 3)(X.double()).argmax(-1)
    shifted = fit_probe(4.0 * X + 50.0, y, 3)((4.0 * X + 50.0).double()).argmax(-1)
    assert torch.equal(plain, shifted) and (plain == y).double().mean() > 0.9


def test_split_indices_is_a_partition_and_validates():
    train, test = split_indices(10, 0.3, gen(0))
    assert sorted(torch.cat([train, test]).tolist()) == list(range(10)) and len(train) == 3
    with pytest.raises(ValueError, match="train_frac"):
        split_indices(10, 0.0, gen(0))


# --- T2 key overlap ---------------------------------------------------------------------------

def prompts(seed: int, subjects: torch.Tensor, *relations: int) -> torch.Tensor:
    """"BOS s r... SEP" rows (BOS=1, SEP=2), like toymodels.tasks.knowledge."""
    n = len(subjects)
    cols = [torch.full((n,), 1), subjects] + [torch.full((n,), r) for r in relations] + [torch.full((n,), 2)]
    return torch.stack(cols, 1)  # (n, 2 + len(relations) + 1)


def test_t2_overlap_is_one_on_own_prompts_and_matches_dense_computation(models):
    model, path = models["merged"], "blocks.0.mlp.W_out"
    B, A, X = torch.tensor([8, 9, 10]), torch.tensor([11, 12, 13]), torch.tensor([14, 15, 16, 17])
    expert, two_hop, control = prompts(0, B, 5), prompts(0, A, 4, 5), prompts(0, X, 4, 5)
    out = t2_key_overlap(model, path, (expert, -1), {"one_hop": (expert, -1), "two_hop": (two_hop, -1),
                                                     "control": (control, -1)}, paired=("one_hop", "two_hop"))
    torch.testing.assert_close(out["one_hop"]["coef_paired"], torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(out["one_hop"]["cos_paired"], torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert out["control"]["coef"].shape == (3, 4) and "coef_paired" not in out["control"]

    def key(idx):  # layer-0 MLP hidden at the last position, modules applied by hand
        with torch.no_grad():
            x = model.W_E(idx) + model.W_pos(torch.arange(idx.shape[1]))  # (n, T, d_model)
            block = model.blocks[0]
            x = x + block.attn(block.ln_attn(x))
            return F.gelu(block.ln_mlp(x)[:, -1] @ block.mlp.W_in.weight.T).double()  # (n, d_mlp)

    v2 = key(expert)
    for name, idx in (("two_hop", two_hop), ("control", control)):
        vp = key(idx)
        dense = torch.tensor([[float(sum(a * b for a, b in zip(v2[i].tolist(), vp[j].tolist())))
                               / float(sum(a * a for a in v2[i].tolist())) for j in range(len(vp))]
                              for i in range(3)], dtype=torch.float64)
        torch.testing.assert_close(out[name]["coef"], dense, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(out["two_hop"]["coef_paired"], torch.ones(3, dtype=torch.float64), atol=1e-3)
    torch.testing.assert_close(out["two_hop"]["coef_paired"], out["two_hop"]["coef"].diagonal())
    with pytest.raises(ValueError, match="paired set"):
        t2_key_overlap(model, path, (expert, -1), {"control": (control, -1)}, paired=("control",))


def test_t2_identity_in_the_gpt_for_a_rank_one_edit(base):
    """P1/T2 in the toy GPT: a rank-one edit ``delta = u v2^T/||v2||^2`` of the LAST layer's
    W_out moves the final residual stream at a prompt with key v' by exactly
    ``(<v2, v'>/||v2||^2) u``; delta_readout recovers that coefficient."""
    path = "blocks.1.mlp.W_out"
    expert, others = prompts(0, torch.tensor([8]), 5), prompts(0, torch.tensor([11, 12, 8, 14]), 4, 5)
    v2 = adapter_keys(base, path, expert, -1)[0]  # (d_mlp,)
    u = torch.randn(MODEL.d_model, generator=gen(11))
    edit = Adapter(LoRAConfig(rank=1, alpha=1.0, targets=("mlp_out",)),
                   {path: Factors(A=(v2 / v2.square().sum())[None], B=u[:, None])})
    merged = merge_into_new_model(base, edit)
    keys = adapter_keys(merged, path, others, -1)  # (4, d_mlp): W_out edits leave its own input alone
    coef = key_overlap(v2[None], keys)["coef"][0]  # (4,)
    cache_b, cache_m = ActivationCache(), ActivationCache()
    with torch.no_grad():
        base(others, cache_b), merged(others, cache_m)
    moved = (cache_m.resid[-1] - cache_b.resid[-1])[:, -1].double()  # (4, d_model)
    torch.testing.assert_close(moved, coef[:, None] * u.double(), rtol=1e-4, atol=1e-6)
    readout = delta_readout(edit.factors[path].delta, keys, u.expand(4, -1))
    torch.testing.assert_close(readout["dot"] / u.square().sum().double(), coef, rtol=1e-5, atol=1e-7)
    assert coef.abs().min() > 1e-3  # raw GELU keys overlap: the edit does reach other prompts


# --- router weights ---------------------------------------------------------------------------

def test_router_heatmap_shapes_and_arrow_oracle(models, experts):
    model, idx = models["routed"], tokens(3)
    out = router_heatmap(model, idx)
    n_paths = len(TARGETS) * MODEL.n_layers
    assert out["weights"].shape == (n_paths, 3, MODEL.n_ctx, len(experts))
    assert out["mean"].shape == (n_paths, MODEL.n_ctx, len(experts))
    assert out["roles"] == [r for r in TARGETS for _ in range(MODEL.n_layers)]
    assert out["layers"] == list(range(MODEL.n_layers)) * len(TARGETS)
    torch.testing.assert_close(out["weights"].sum(-1), torch.ones(n_paths, 3, MODEL.n_ctx))
    for row, path in enumerate(out["paths"]):
        routed = model.get_submodule(path)
        assert isinstance(routed, RoutedLinear)
        x = adapter_keys(model, path, idx, -1)  # (B, d_in): the router's input at the last token
        expect = arrow_weights(x, routed.router.prototypes, routed.router.top_k, routed.router.temperature)
        torch.testing.assert_close(out["weights"][row, :, -1], expect)
    with pytest.raises(ValueError, match="RoutedLinear"):
        router_heatmap(models["merged"], idx)
