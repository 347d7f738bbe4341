"""The protocol's seed rule (toymodels/seeds.py, toymodels/protocol.py): each LoRA and each
randomized merge draws from its own stream, named by the run seed, the scope and its name, so
what one adapter learns does not depend on which other adapters the run trains, or in what order."""
import dataclasses

import pytest
import torch

from toymodels.model import role_modules
from toymodels.pipeline import train_base
from toymodels.presets import tiny_two_hop
from toymodels.protocol import Backend, TaskFamily, run_protocol
from toymodels.seeds import numpy_rng
from toymodels.tasks.experts import make_expert_set

SETTING = dataclasses.replace(tiny_two_hop("cot"), methods=("average", "dare"))


@pytest.fixture(scope="module")
def split():
    base = train_base(SETTING.base, seed=0, device="cpu")
    return base, make_expert_set(base.pretraining, SETTING.experts, "R", numpy_rng(0, "experts", "R"))


def run(split, names, seed=0, scope=("R",)) -> dict:
    """Every model's logits on the composed prompts (an exact fingerprint of its weights' effect)."""
    base, es = split
    prompts = es.composed.tokens[:, :-1]  # (N, T - 1)
    family = TaskFamily(experts={n: es.train[n] for n in names}, libraries={"hops": ("AB", "BC")},
                        shots=es.composed[:1], score=lambda model, members, method: model.eval()(prompts).detach(),
                        oracle=lambda per, members: per)
    return run_protocol(family, Backend(base.model, role_modules(base.model), "cpu"), SETTING, seed, scope)["models"]


def test_an_adapter_and_a_merge_do_not_depend_on_the_other_experts_or_their_order(split):
    """AB, BC, the joint LoRA and the DARE merge of {AB, BC} are the same when a distractor is
    trained first and the order is reversed (one shared generator would make them all differ)."""
    plain, shuffled = run(split, ["AB", "BC"]), run(split, ["D0", "BC", "AB"])
    for name in ("single/AB", "single/BC", "joint/hops", "average/hops", "dare/hops"):
        assert torch.equal(plain[name], shuffled[name]), name
    assert not torch.equal(plain["dare/hops"], plain["average/hops"])  # DARE drew a mask (the check can fail)


def test_the_seed_and_the_scope_name_the_streams(split):
    """Another run seed or another scope (split) gives AB another init and batch order."""
    plain = run(split, ["AB", "BC"])
    for other in (run(split, ["AB", "BC"], seed=1), run(split, ["AB", "BC"], scope=("F",))):
        assert not torch.allclose(plain["single/AB"], other["single/AB"])


def test_stacked_training_gives_the_sequential_outputs():
    """Every LoRA of a split trained in one stacked run (issue 11 item 1): the same steps, losses,
    curves and scores of every model as one run per LoRA, up to float rounding."""
    from tests.protocol_regression import differences, strip
    from toymodels.pipeline import run_two_hop

    cfg = dataclasses.replace(tiny_two_hop("cot"), familiarities=("R",))
    base = train_base(cfg.base, seed=0, device="cpu")
    one, stacked = (strip(run_two_hop(cfg, 0, "cpu", base=base, stacked=s))["splits"]["R"] for s in (False, True))
    assert one["experts"]["AB"]["losses"] and len(one["models"]) > 10  # nonzero training, every model
    assert differences(one, stacked, tol=1e-4) == []
