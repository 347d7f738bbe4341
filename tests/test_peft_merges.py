"""PEFT-named merges (``toymodels/peft_merges.py``) against peft's own ``add_weighted_adapter``,
and the one-adapter identity for every merge of ours (a hypothesis property).

Oracle: peft itself on a tiny random Llama holding our NONZERO adapters (saved with
``save_adapter``, loaded with ``PeftModel.from_pretrained``): unequal alphas, unequal ranks,
negative weights, an rsLoRA adapter first or not. Compared: every merged module's delta,
``||ours - peft||_F / ||peft||_F <= 1e-6``. dare: both sides draw their Bernoulli masks from
generators in the same state (peft's ``torch.bernoulli`` calls are pointed at a seeded generator
instead of the global RNG; peft's code is otherwise untouched), so the comparison is exact too.
Where PEFT breaks the identity (merging ONE adapter at weight 1 must give it back), the tests
record PEFT's measured departure and check that ours holds it."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from theory import merge  # noqa: E402
from theory.merge import Factors  # noqa: E402
from toymodels import peft_merges as PM  # noqa: E402
from toymodels import reuse  # noqa: E402
from toymodels.adapters import Adapter, random_adapter  # noqa: E402
from toymodels.peft_checkpoint import save_adapter  # noqa: E402
from toymodels.lora import LoRAConfig  # noqa: E402
from toymodels.presets import tiny_two_hop  # noqa: E402
from toymodels.pretrained import llama_role_map, tiny_llama  # noqa: E402
from toymodels.scoring import method_options  # noqa: E402
from conftest import seeded as gen  # noqa: E402

TARGETS = ("q", "v", "down")
WEIGHTS = [0.7, -0.4, 1.3]  # one negative
ALPHAS = (4.0, 8.0, 1.0)  # scales 2, 4 and (rsLoRA) 0.5 at rank 2 / 4


@pytest.fixture(scope="module")
def base():
    return tiny_llama(gen(0))


def make(base, seed, **cfg) -> Adapter:
    cfg = {"targets": TARGETS, **cfg}
    return random_adapter(base, LoRAConfig(**cfg), llama_role_map(base), gen(seed), B_std=0.3)


@pytest.fixture(scope="module")
def banks(base):
    """Equal ranks (the factor-space types need them) and unequal ranks; the rsLoRA adapter last
    or first (PEFT's merged scale follows the FIRST adapter)."""
    equal = [make(base, 1, rank=2, alpha=ALPHAS[0]), make(base, 2, rank=2, alpha=ALPHAS[1]),
             make(base, 3, rank=2, alpha=ALPHAS[2], rslora=True)]
    unequal = [make(base, 1, rank=2, alpha=ALPHAS[0]), make(base, 2, rank=3, alpha=ALPHAS[1]),
               make(base, 3, rank=4, alpha=ALPHAS[2], rslora=True)]
    return {(kind, first): bank[::-1] if first == "rslora" else bank
            for kind, bank in (("equal", equal), ("unequal", unequal)) for first in ("plain", "rslora")}


@pytest.fixture(scope="module")
def peft_models(base, banks, tmp_path_factory):
    """One PeftModel per bank, adapters ``a0, a1, ...``; each test adds its own merged adapter."""
    out = {}
    for key, bank in banks.items():
        folder = tmp_path_factory.mktemp("-".join(key))
        for i, adapter in enumerate(bank):
            save_adapter(adapter, folder / f"a{i}")
        model = peft.PeftModel.from_pretrained(copy.deepcopy(base), folder / "a0", adapter_name="a0")
        for i in range(1, len(bank)):
            model.load_adapter(folder / f"a{i}", adapter_name=f"a{i}")
        out[key] = model
    return out


def peft_deltas(model, name: str) -> dict[str, torch.Tensor]:
    return {path: m.get_delta_weight(name).detach() for path, m in model.base_model.model.named_modules()
            if hasattr(m, "lora_A") and name in m.lora_A}


def peft_merged(model, n: int, weights, name: str, combination_type: str, seed: int | None = None, **options):
    """``add_weighted_adapter``; with ``seed``, its ``torch.bernoulli`` draws come from ``gen(seed)``."""
    names = [f"a{i}" for i in range(n)]
    if seed is None:
        model.add_weighted_adapter(names, weights, name, combination_type=combination_type, **options)
    else:
        draws, bernoulli = gen(seed), torch.bernoulli
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch, "bernoulli", lambda p, **kw: bernoulli(p, generator=draws))
            model.add_weighted_adapter(names, weights, name, combination_type=combination_type, **options)
    return peft_deltas(model, name)


def assert_same_deltas(ours: Adapter, theirs: dict[str, torch.Tensor], rtol: float = 1e-6):
    assert theirs and set(ours.paths) == set(theirs)
    for path, delta in theirs.items():
        err = float((ours.factors[path].delta - delta).norm() / delta.norm())
        assert float(delta.norm()) > 1e-3 and err <= rtol, (path, err)


CASES = [pytest.param(t, {}, id=t) for t in ("linear", "cat", "svd")] + [
    pytest.param(t, {"density": 0.5}, id=t) for t in PM.COMBINATION_TYPES if t not in ("linear", "cat", "svd")] + [
    pytest.param("ties", {"density": 0.3, "majority_sign_method": "frequency"}, id="ties,frequency"),
    pytest.param("magnitude_prune", {"density": 0.25}, id="magnitude_prune,0.25"),
    pytest.param("svd", {"svd_rank": 3, "svd_clamp": 0.8}, id="svd,rank=3,clamp"),
    pytest.param("dare_ties_svd", {"density": 0.6, "majority_sign_method": "frequency", "svd_full_matrices": False},
                 id="dare_ties_svd,frequency,reduced")]


@pytest.mark.parametrize("first", ["plain", "rslora"])
@pytest.mark.parametrize("combination_type, options", CASES)
def test_peft_named_merge_equals_peft(banks, peft_models, combination_type, options, first):
    """peft_<type> = PEFT's add_weighted_adapter, module by module, dare draws included."""
    kind = "equal" if combination_type in PM.FACTOR_TYPES else "unequal"
    bank, model = banks[kind, first], peft_models[kind, first]
    seed = 11 if combination_type.startswith("dare") else None
    name = "".join([combination_type, *(f"_{v}" for v in options.values())]).replace(".", "p")  # no dots
    theirs = peft_merged(model, len(bank), WEIGHTS, name, combination_type, seed, **options)
    generator = {"generator": gen(seed)} if seed is not None else {}
    ours = reuse.MERGES[f"peft_{combination_type}"](bank, WEIGHTS, **options, **generator)
    assert_same_deltas(ours, theirs)
    if seed is not None:  # the masks really dropped entries: not the undropped merge
        undropped = PM.peft_merge(bank, WEIGHTS, combination_type, **{**options, "density": 1.0}, **generator)
        assert any(float((ours.factors[p].delta - undropped.factors[p].delta).norm()) > 1e-3 for p in ours.paths)


@pytest.mark.parametrize("first", ["plain", "rslora"])
def test_ours_equal_peft_where_the_math_is_the_same(banks, first):
    """factor_average = peft_linear, cat = peft_cat, svd = peft_svd (same rank), delta for delta,
    except PEFT's sqrt(r_new) when the first adapter is rsLoRA (r_new = 2, 2+3+4, svd rank 4)."""
    equal, unequal = banks["equal", first], banks["unequal", first]
    quirk = (lambda r: math.sqrt(r)) if first == "rslora" else (lambda r: 1.0)
    for ours, theirs, r in [(reuse.factor_average(equal, WEIGHTS), PM.peft_merge(equal, WEIGHTS, "linear"), 2),
                            (reuse.cat(unequal, WEIGHTS), PM.peft_merge(unequal, WEIGHTS, "cat"), 9),
                            (reuse.svd(unequal, 4, WEIGHTS), PM.peft_merge(unequal, WEIGHTS, "svd", svd_rank=4), 4)]:
        assert_same_deltas(ours, {p: f.delta / quirk(r) for p, f in theirs.factors.items()}, rtol=2e-6)


def test_our_ties_is_peft_ties_svd_only_at_equal_weights_because_peft_elects_unweighted(base):
    """Documented difference: at weights (1, 1), density*numel an integer and full svd_rank (32
    on q and down), our ties = PEFT's ties_svd; at (0.7, 0.3) PEFT elects each sign from the
    UNWEIGHTED trimmed deltas and the merges differ exactly where that election differs from
    ours (weighted)."""
    bank = [make(base, 1, rank=2, alpha=4.0, targets=("q", "down")), make(base, 2, rank=3, alpha=8.0,
                                                                          targets=("q", "down"))]
    ours = reuse.ties(bank, [1.0, 1.0], density=0.5)
    assert_same_deltas(ours, PM.peft_merge(bank, [1.0, 1.0], "ties_svd", density=0.5, svd_rank=32).deltas(), 1e-5)
    flipped = 0
    for path in bank[0].paths:
        deltas = [a.factors[path].delta for a in bank]
        mine, peft_ = merge.ties(deltas, [0.7, 0.3], 0.5), PM.combine(deltas, [0.7, 0.3], "ties", 0.5)
        kept = torch.stack([PM.magnitude_prune(d, 0.5) for d in deltas])  # (2, d_out, d_in)
        votes_differ = torch.sign((kept * torch.tensor([0.7, 0.3])[:, None, None]).sum(0)) != torch.sign(kept.sum(0))
        assert torch.equal(mine != peft_, votes_differ)
        flipped += int(votes_differ.sum())
    assert flipped > 20


def test_peft_dare_linear_in_factor_space_is_unbiased_for_peft_linear():
    """E[B' A'] = E[B'] E[A'] with independent masks: the mean of 3000 seeded draws is within
    4.5 standard errors of peft_linear on every entry; without the 1/density rescale (x d^2)
    the check fails."""
    g = gen(5)
    bank = [Adapter(LoRAConfig(rank=2, alpha=a, targets=("q",)),
                    {"W": Factors(torch.randn(2, 5, generator=g), torch.randn(4, 2, generator=g), a / 2)})
            for a in (2.0, 6.0)]
    target = PM.peft_merge(bank, [0.8, -0.5], "linear").factors["W"].delta
    draws, d = torch.Generator().manual_seed(6), 0.6
    samples = torch.stack([PM.peft_merge(bank, [0.8, -0.5], "dare_linear", density=d, generator=draws)
                           .factors["W"].delta for _ in range(3000)])  # (3000, 4, 5)
    se = samples.std(0) / math.sqrt(len(samples))
    assert float(((samples.mean(0) - target) / se).abs().max()) <= 4.5
    assert float(((d * d * samples.mean(0) - target) / se).abs().max()) > 4.5


# --- the identity: ONE adapter at weight 1 -------------------------------------------------

OURS = {"average": {}, "sum": {}, "task_arithmetic": {}, "cat": {}, "factor_average": {},
        "svd": {"rank": "r"}, "ties": {"density": 1.0}, "dare": {"drop_rate": 0.0, "generator": "g"}}


def test_identity_cases_cover_every_merge_of_ours():
    assert set(OURS) | set(PM.MERGES) == set(reuse.MERGES)


@settings(max_examples=30, deadline=None)
@given(r=st.integers(1, 4), alpha=st.floats(0.25, 16.0), rslora=st.booleans(), extra=st.integers(0, 4),
       weight=st.one_of(st.just(1.0), st.floats(-2.0, 2.0).filter(lambda w: abs(w) > 1e-3)),
       seed=st.integers(0, 2**16))
def test_one_adapter_comes_back_from_every_merge_of_ours_and_peft_names_scale_it_by_sqrt_r(
        r, alpha, rslora, extra, weight, seed):
    """Ours: merge([a], [w]) = w * a for every method (lossless settings: ties density 1, dare
    drop 0, svd rank r), plain or rsLoRA. peft_*: the same for plain LoRA, sqrt(r) * w * a for
    rsLoRA (PEFT's quirk, reproduced; huggingface/peft#3761)."""
    g = gen(seed)
    config = LoRAConfig(rank=r, alpha=alpha, rslora=rslora, targets=("q", "v"))
    shape = [(r + extra, r + 1), (r + 2, r + extra)]
    adapter = Adapter(config, {f"m{i}": Factors(torch.randn(r, d_in, generator=g, dtype=torch.float64),
                                               torch.randn(d_out, r, generator=g, dtype=torch.float64), config.scale)
                               for i, (d_out, d_in) in enumerate(shape)})
    for name, fn in reuse.MERGES.items():
        options = {k: {"r": r, "g": gen(0)}.get(v, v) for k, v in OURS.get(name, {}).items()}
        if name.startswith("peft_"):  # PEFT merges one adapter as linear whatever the type and options
            options = {} if name in ("peft_linear", "peft_cat", "peft_svd") else {"density": 0.5}
            options |= {"generator": gen(0)} if "dare" in name else {}
        w = 1.0 if name == "average" else weight
        merged = fn([adapter], **options) if name == "average" else fn([adapter], weights=[w], **options)
        factor = math.sqrt(r) if rslora and name.startswith("peft_") else 1.0
        for path, f in adapter.factors.items():
            torch.testing.assert_close(merged.factors[path].delta, factor * w * f.delta, rtol=1e-9, atol=1e-9,
                                       msg=f"{name} {path}")


@pytest.mark.parametrize("variant", ["use_rslora", "lora_bias", "use_dora"])
def test_peft_breaks_the_one_adapter_identity_and_we_record_by_how_much(base, variant):
    """PEFT 0.21, ONE adapter at weight 1 (any combination_type is linear then), trained-like
    (random B, bias, magnitude): rsLoRA -> the merged delta is exactly sqrt(r) = 2 times the
    adapter's; lora_bias -> the merged lora_B bias is 0 (the adapter's is dropped); DoRA -> the
    merged magnitude is the base weight's row norms ||W||, not the adapter's. Ours: rsLoRA
    holds the identity (property test above); DoRA adapters are refused at load."""
    torch.manual_seed(0)  # PEFT's LoRA init draws from the global RNG
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], **{variant: True})
    model = peft.get_peft_model(copy.deepcopy(base), config, adapter_name="src")
    g = gen(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("lora_B.src.weight", "lora_B.src.bias", "lora_magnitude_vector.src.weight")):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    model.add_weighted_adapter(["src"], [1.0], "m", combination_type="svd")
    x = torch.randint(0, 128, (2, 7), generator=gen(1))
    logits = {}
    for name in ("src", "m"):
        model.set_adapter(name)
        with torch.no_grad():
            logits[name] = model(input_ids=x).logits
    assert float((logits["m"] - logits["src"]).norm() / logits["src"].norm()) > 0.1  # a visible difference
    for layer in model.base_model.model.model.layers:
        q = layer.self_attn.q_proj.requires_grad_(False)
        delta_a, delta_m = q.get_delta_weight("src"), q.get_delta_weight("m")
        if variant == "use_rslora":
            torch.testing.assert_close(delta_m, 2.0 * delta_a)
            continue
        torch.testing.assert_close(delta_m, delta_a)  # the LoRA product itself comes back
        if variant == "lora_bias":
            assert float(q.lora_B["src"].bias.norm()) > 0.1 and float(q.lora_B["m"].bias.abs().max()) == 0.0
        else:
            magnitude = q.lora_magnitude_vector
            torch.testing.assert_close(magnitude["m"].weight, q.base_layer.weight.norm(dim=1))
            assert float((magnitude["src"].weight - magnitude["m"].weight).norm()) > 0.1


def test_peft_drops_modules_outside_the_first_adapters_layers_and_we_refuse(base, tmp_path):
    """The merged adapter inherits the first adapter's layers_to_transform: PEFT merges only
    layer 1 here and silently loses the second adapter's layer-0 modules; peft_* refuses."""
    bank = [make(base, 1, rank=2, alpha=4.0, layers=(1,)), make(base, 2, rank=2, alpha=4.0)]
    for i, adapter in enumerate(bank):
        save_adapter(adapter, tmp_path / f"a{i}")
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "a0", adapter_name="a0")
    model.load_adapter(tmp_path / "a1", adapter_name="a1")
    merged = peft_merged(model, 2, [1.0, 1.0], "m", "cat")
    assert set(merged) == {p for p in bank[1].paths if ".layers.1." in p} != set(bank[1].paths)
    with pytest.raises(ValueError, match=r"the first adapter covers layers \[1\] only"):
        PM.peft_merge(bank, [1.0, 1.0], "cat")
    assert set(PM.peft_merge(bank[::-1], [1.0, 1.0], "cat").paths) == set(bank[1].paths)


def test_bad_options_are_one_line_errors(banks):
    equal, unequal = banks["equal", "plain"], banks["unequal", "plain"]
    for call, message in [
        (lambda: PM.peft_merge(equal, None, "mean"), r"combination_type='mean': must be one of linear"),
        (lambda: PM.peft_merge(equal, None, "linear", density=0.5), r"density=0.5: not used by .*'linear'"),
        (lambda: PM.peft_merge(equal, None, "ties"), r"density=None: ties needs the share of entries kept, in \[0, 1\]"),
        (lambda: PM.peft_merge(equal, None, "dare_linear", density=0.0, generator=gen()), r"density=0.0: .*\(0, 1\]"),
        (lambda: PM.peft_merge(equal, None, "magnitude_prune", density=1.5), r"density=1.5: .*in \[0, 1\]"),
        (lambda: PM.peft_merge(equal, None, "dare_ties", density=0.5), r"generator=None: dare_ties draws"),
        (lambda: PM.peft_merge(unequal, None, "linear"), r"same rank, got \[2, 3, 4\]: use peft_cat or peft_svd"),
        (lambda: PM.peft_merge(unequal, None, "svd", svd_rank=40), r"svd_rank=40: must be in \[1, 32\]"),
        (lambda: PM.peft_merge(equal, None, "ties", density=0.5, majority_sign_method="mass"),
         r"majority_sign_method='mass': must be one of total, frequency"),
        (lambda: PM.peft_merge(equal, [1.0], "cat"), r"weights has 1 entries for 3 adapters")]:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("name", list(PM.MERGES))
def test_experiment_options_run_every_peft_method(banks, name):
    """scoring.method_options gives each peft_* what it needs and nothing it refuses."""
    bank = banks["equal", "plain"]
    merged = reuse.MERGES[name](bank, **method_options(name, tiny_two_hop(), len(bank), gen=gen(0)))
    assert set(merged.paths) == set(bank[0].paths)
