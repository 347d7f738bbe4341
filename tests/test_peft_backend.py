"""``lora_backend="peft"`` (toymodels/peft_backend.py): PEFT's get_peft_model trains the LoRAs
of the pretrained two-hop protocol on the same data, seeds and inits as our LoRALinear; the
reuse results must agree with our backend's on a tiny random Llama.

Tolerance: the two backends compute the same function in a different float order (PEFT:
``base(x) + lora_B(lora_A(x)) * scaling``; ours: ``base(x) + scale * (x @ A.T) @ B.T``), so
each step's gradients differ by float32 rounding (~1e-7 relative); Adam normalises each
update, which can amplify a rounding difference in a near-zero gradient to at most ``lr``
per step, over the few steps here. So answer log-probabilities must agree to 1e-3 nats
(differences from a wrong scale, init, target set or data order are orders larger: the
test below checks that a different seed moves them by more than that) and exact matches
exactly."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from tests.test_pretrained import word_tokenizer  # noqa: E402
from toymodels.lora import LoRAConfig  # noqa: E402
from toymodels.pretrained import tiny_llama  # noqa: E402
from toymodels.pretrained_two_hop import PretrainedTwoHopConfig, draw_chains, run_pretrained_two_hop  # noqa: E402
from toymodels.reuse_options import ReuseOptions  # noqa: E402
from toymodels.tasks import natural  # noqa: E402
from toymodels.tasks.natural import NaturalConfig, eval_pairs, expert_pairs  # noqa: E402
from toymodels.train import TrainConfig  # noqa: E402

CFG = PretrainedTwoHopConfig(
    task=NaturalConfig(n_countries=2, cities_per_country=2, relations2=("capital",)),
    lora=LoRAConfig(rank=2, alpha=4.0, targets=("q", "v", "down")),
    finetune=TrainConfig(steps=4, batch_size=4, lr=1e-2, warmup_steps=0, eval_every=2, weight_decay=0.0),
    methods=("average", "ties", "arrow"), reuse=ReuseOptions(lorahub_budget=2), familiarity_facts=1, n_control=2)


@pytest.fixture(scope="module")
def setup():
    chains = [c for s in (0, 1) for c in draw_chains(CFG.task, s)]
    pairs = [p for ps in [*expert_pairs(chains).values(), *eval_pairs(chains).values()] for p in ps]
    words = {w for p, a in pairs + natural.known_fact_pairs(1) for w in (p + a).split()}
    model = tiny_llama(torch.Generator().manual_seed(0), vocab=len(words) + 1)
    return model, word_tokenizer(sorted(words))


@pytest.fixture(scope="module")
def runs(setup):
    model, tok = setup
    return {(backend, seed): run_pretrained_two_hop(CFG, model, tok, seed=seed, lora_backend=backend)
            for backend, seed in (("ours", 0), ("peft", 0), ("ours", 1))}


def _numbers(out: dict) -> dict[tuple, float]:
    """Every score of every model: per eval set exact and logprob, and the shared metrics."""
    flat = {}
    for name, sets in out["models"].items():
        for s, v in sets.items():
            flat[(name, s, "exact")], flat[(name, s, "logprob")] = v["exact"], v["logprob"]
    for name, fams in out["metrics"].items():
        for fam, m in fams.items():
            flat[(name, fam, "margin")] = m["specificity"]["logprob_margin"]
            flat[(name, fam, "cond_n")] = m["conditional"]["n"]
    return flat


def test_peft_and_ours_give_the_same_reuse_results(runs):
    ours, peft_ = _numbers(runs[("ours", 0)]), _numbers(runs[("peft", 0)])
    assert ours.keys() == peft_.keys() and any(name.startswith("ties/") for name, *_ in ours)
    for key, value in ours.items():
        if key[-1] in ("exact", "cond_n"):
            assert peft_[key] == value, key
        else:
            assert peft_[key] == pytest.approx(value, abs=1e-3), key
    base = runs[("ours", 0)]["models"]["base"]
    trained = runs[("ours", 0)]["models"]["average/hops"]
    assert max(abs(trained[s]["logprob"] - base[s]["logprob"]) for s in base) > 1e-2  # the LoRAs changed something
    assert runs[("peft", 0)]["lora_backend"] == "peft"


def test_another_seed_differs_by_more_than_the_tolerance(runs):
    """The tolerance above is tight enough to catch a different init or data order."""
    a, b = _numbers(runs[("ours", 0)]), _numbers(runs[("ours", 1)])
    shared = [k for k in a if k in b and k[-1] == "logprob" and k[0] != "base"]
    assert max(abs(a[k] - b[k]) for k in shared) > 1e-2


def test_unknown_backend_is_refused(setup):
    model, tok = setup
    with pytest.raises(ValueError, match="lora_backend='loralib': must be one of ours, peft"):
        run_pretrained_two_hop(CFG, model, tok, lora_backend="loralib")
