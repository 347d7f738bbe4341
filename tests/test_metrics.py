"""Composition metrics (toymodels/metrics.py, issue 12 item 1), the two-hop score dict and oracle
(toymodels/scoring.py), and the joint full fine-tune ceiling (toymodels/protocol.py), each
against an independent computation on hand-made models whose logits are fixed by hand."""
import copy
import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from toymodels.lora import LoRAConfig
from toymodels.metrics import composed_metrics, conditional, gold_rank, specificity
from toymodels.model import GPT, ModelConfig, role_modules
from toymodels.pipeline import BaseRun
from toymodels.presets import tiny_finetune, tiny_two_hop
from toymodels.protocol import Backend, TaskFamily, run_protocol
from toymodels.reuse_options import ReuseOptions
from toymodels.scoring import oracle, score_model
from toymodels.tasks.experts import ExpertConfig, make_expert_set
from toymodels.tasks.knowledge import BOS, EOS, GraphConfig, encode
from toymodels.tasks.twohop import TwoHopConfig, make_pretraining


class Table(nn.Module):
    """``logits[b, t] = table[x[b, 1], t]``: fixed logits per subject token and position."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)  # (V, T, V)

    def forward(self, x):
        return self.table[x[:, 1], :x.shape[1]]  # (B, T, V)


class Lookup(nn.Module):
    """Logit 10 on ``nxt[prefix]`` after each planted prefix, 0 everywhere else (uniform)."""

    def __init__(self, nxt: dict, d_vocab: int):
        super().__init__()
        self.nxt, self.d_vocab = nxt, d_vocab
        self.dummy = nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x):
        out = torch.zeros(*x.shape, self.d_vocab)  # (B, T, V)
        for b in range(x.shape[0]):
            for t in range(x.shape[1]):
                if (tok := self.nxt.get(tuple(x[b, :t + 1].tolist()))) is not None:
                    out[b, t, tok] = 10.0
        return out


def log_softmax(v):
    v = np.asarray(v, dtype=np.float64)
    return v - np.log(np.exp(v - v.max()).sum()) - v.max()


def test_gold_rank_counts_strictly_better_tokens():
    logp = torch.tensor([[0.0, 3.0, 1.0, 3.0], [2.0, 2.0, 2.0, 5.0]])
    assert gold_rank(logp, torch.tensor([2, 0])).tolist() == [3, 2]  # ties in the gold's favour
    rand = torch.randn(6, 9, generator=torch.Generator().manual_seed(0))
    gold = torch.arange(6)
    want = [1 + sum(rand[i, k] > rand[i, gold[i]] for k in range(9)) for i in range(6)]
    assert gold_rank(rand, gold).tolist() == want


def test_specificity_matches_a_loop_and_its_sign_follows_the_planted_answer():
    logp = torch.log_softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(1)), -1)
    gold = torch.tensor([2, 5, 7, 5])  # rows 1 and 3 share an answer: distinct wrong answers only
    p = logp.exp().numpy()
    wrongs = [np.mean([p[i, a] for a in {2, 5, 7} - {int(gold[i])}]) for i in range(4)]
    got = specificity(logp, gold)
    assert got["right"] == pytest.approx(np.mean([p[i, gold[i]] for i in range(4)]), rel=1e-5)
    assert got["wrong"] == pytest.approx(np.mean(wrongs), rel=1e-5)
    assert got["margin"] == pytest.approx(got["right"] - got["wrong"], abs=1e-7)
    gold = torch.tensor([1, 3, 6])
    right = torch.zeros(3, 8).index_put_((torch.arange(3), gold), torch.tensor(5.0))
    broadcast = torch.zeros(3, 8)
    broadcast[:, gold] = 5.0
    broadcast[torch.arange(3), gold] = 0.0  # every OTHER question's answer beats the right one
    assert specificity(torch.log_softmax(right, -1), gold)["margin"] > 0.5
    assert specificity(torch.log_softmax(broadcast, -1), gold)["margin"] < -0.3
    one = specificity(torch.log_softmax(right[:1], -1), gold[:1])  # no other answer: no wrong P
    assert math.isnan(one["wrong"]) and math.isnan(one["margin"])


def test_conditional_is_none_without_questions_and_counts_only_those_known():
    assert conditional(torch.tensor([True, False]), torch.tensor([False, False])) == {"composed": None, "n": 0}
    ok, known = torch.tensor([True, False, True, False]), torch.tensor([True, True, False, False])
    assert conditional(ok, known) == {"composed": 0.5, "n": 2}


@pytest.mark.parametrize("fmt", ["latent", "cot"])
def test_composed_metrics_match_an_independent_computation_on_fixed_logits(fmt):
    """Rows ``BOS a r1 r2 [b] c EOS``. Planted: row 0 all right; row 1 wrong bridge but right
    answer (composed, not chain, in CoT); row 2 answers row 0's C (broadcast)."""
    V, cot = 12, fmt == "cot"
    chains = [(5, 8, 9), (6, 10, 11), (7, 8, 10)]  # (a, b, c)
    rows = [([BOS, a, 3, 4], ([b] if cot else []) + [c, EOS]) for a, b, c in chains]
    table = torch.randn(V, 7, V, generator=torch.Generator().manual_seed(2))
    q = 4 if cot else 3  # position whose logits predict c
    plant = {(5, q - 1): 8, (5, q): 9, (5, q + 1): EOS, (6, q - 1): 5, (6, q): 11, (6, q + 1): EOS,
             (7, q - 1): 8, (7, q): 9, (7, q + 1): EOS}
    for (a, t), tok in plant.items():
        table[a, t, tok] += 20.0
    got, right = composed_metrics(Table(table), encode(rows))
    at = [table[a, q].numpy() for a, _, _ in chains]
    gold = [c for _, _, c in chains]
    lp = [log_softmax(v) for v in at]
    assert right.tolist() == [True, True, False] and got["composed"] == pytest.approx(2 / 3)
    assert got["composed_chain"] == pytest.approx(1 / 3 if cot else 2 / 3)
    assert got["composed_logprob"] == pytest.approx(np.mean([lp[i][gold[i]] for i in range(3)]), rel=1e-5)
    assert got["composed_rank"] == pytest.approx(np.mean([1 + (at[i] > at[i][gold[i]]).sum() for i in range(3)]))
    p = [np.exp(x) for x in lp]
    wrong = np.mean([np.mean([p[i][g] for g in gold if g != gold[i]]) for i in range(3)])
    assert got["specificity"]["wrong"] == pytest.approx(wrong, rel=1e-5)
    assert got["specificity"]["right"] == pytest.approx(np.mean([p[i][gold[i]] for i in range(3)]), rel=1e-5)
    empty, _ = composed_metrics(Table(table), encode(rows)[:0])
    assert math.isnan(empty["composed"]) and math.isnan(empty["specificity"]["margin"])


def tiny_split(fmt="cot", fam="F", **task):
    pre = make_pretraining(TwoHopConfig(graph=GraphConfig(n_entities=20, n_relations=3, n_new=20), fmt=fmt,
                                        n_eval=16, **task), np.random.default_rng(0))
    return pre, make_expert_set(pre, ExpertConfig(n_facts=4, n_distractors=1, n_control=8), fam,
                                np.random.default_rng(0))


def plant(nxt: dict, row) -> None:
    prompt, answer = row
    for k, tok in enumerate(answer):
        nxt[tuple(prompt + answer[:k])] = tok


def test_score_model_conditional_and_specificity_on_a_planted_model():
    """Knows both hops of chains 0-2 (and chain 3's AB); composes chains 0 and 3: conditional
    1/3 over n = 3."""
    pre, es = tiny_split()
    nxt: dict = {}
    for name, known in (("AB", range(4)), ("BC", range(3))):
        for i in known:
            s, _, o = (int(x) for x in es.facts[name][i])
            plant(nxt, ([BOS, s, int(es.facts_eval[name].tokens[i, 2])], [o, EOS]))
    for i in (0, 3):
        plant(nxt, ([int(t) for t in es.composed.tokens[i, :4]], [int(t) for t in es.composed.tokens[i, 4:7]]))
    control = es.controls["AC"].questions  # CoT: counted on the final token, after the model's own bridge
    bridge, new_c = int(es.chains[0, 3]), int(es.chains[0, 4])
    plant(nxt, ([int(t) for t in control.tokens[0, :4]], [bridge, new_c, EOS]))
    V = pre.graph.tokenizer.d_vocab
    members = ["AB", "BC", "AC", "D0"]
    got = score_model(Lookup(nxt, V), BaseRun(None, pre, None), es, members)
    assert got["composed"] == 0.5 and got["composed_chain"] == 0.5
    assert got["conditional"] == {"composed": pytest.approx(1 / 3), "n": 3}
    assert got["facts"] == {"AB": 1.0, "BC": 0.75, "AC": 0.5, "D0": 0.0}
    hit, miss = math.exp(10) / (math.exp(10) + V - 1), 1 / V
    assert got["specificity"]["right"] == pytest.approx((2 * hit + 2 * miss) / 4, rel=1e-5)
    assert got["specificity"]["wrong"] == pytest.approx((2 * (1 - hit) / (V - 1) + 2 * miss) / 4, rel=1e-5)
    assert got["composed_rank"] == 1.0  # the planted rows rank C first; uniform rows tie, in its favour
    assert got["broadcast"]["composed"] == pytest.approx(1 / len(control))
    assert "pretrain_test_ood" not in got
    skipped = score_model(Lookup(nxt, V), BaseRun(None, pre, None), es, members, composed_from=1)
    assert skipped["conditional"] == {"composed": 0.0, "n": 2} and skipped["composed"] == pytest.approx(1 / 3)


def test_score_model_reports_ood_retention_where_the_corpus_has_ood_entities():
    pre, es = tiny_split("latent", "O", ood_frac=0.2)  # 4 OOD subjects, 16 in-distribution entities
    got = score_model(Lookup({}, pre.graph.tokenizer.d_vocab), BaseRun(None, pre, None), es, ["AB", "BC"])
    assert got["pretrain_test_ood"] == 0.0 and got["composed"] == 0.0


def test_pipeline_accepts_split_O_only_with_ood_entities():
    cfg = tiny_two_hop()
    with pytest.raises(ValueError, match=r"familiarities contains 'O' but base.task.ood_frac=0.0: .*ood_frac > 0"):
        dataclasses.replace(cfg, familiarities=("O",))
    task = dataclasses.replace(cfg.base.task, ood_frac=0.25)
    ok = dataclasses.replace(cfg, base=dataclasses.replace(cfg.base, task=task), familiarities=("R", "O"))
    assert ok.familiarities == ("R", "O")


def test_oracle_takes_every_composed_metric_from_the_adapter_best_on_composed():
    def scores(c, fact, k):
        return {"composed": c, "composed_chain": c / 2, "composed_logprob": -k, "composed_rank": k,
                "specificity": {"right": k, "wrong": 0.0, "margin": k}, "conditional": {"composed": c, "n": k},
                "facts": {"AB": fact, "BC": 1 - fact}, "broadcast": {"AB": k, "BC": 2 * k, "composed": 3 * k},
                "pretrain_atomic": k, "pretrain_test_id": k}
    per = [scores(0.25, 0.9, 1), scores(0.75, 0.2, 2)]
    out = oracle(per, ["AB", "BC"])
    assert out["composed_adapter"] == "BC" and out["composed"] == 0.75
    for key in ("composed_chain", "composed_logprob", "composed_rank", "specificity", "conditional",
                "pretrain_atomic"):
        assert out[key] == per[1][key], key
    assert out["facts"] == {"AB": 0.9, "BC": 0.8}
    assert out["broadcast"] == {"AB": 1, "BC": 4, "composed": 6}


def full_ft_run(joint_full_lr):
    gen = torch.Generator().manual_seed(0)
    base = GPT(ModelConfig(d_vocab=12, n_ctx=6, n_layers=1, d_model=16, n_heads=2, d_mlp=32), gen)
    base.requires_grad_(False).eval()
    before = copy.deepcopy(base.state_dict())
    data = {name: encode([([BOS, s, 3], [o, EOS]) for s, o in pairs])
            for name, pairs in (("X", [(5, 6), (7, 8)]), ("Y", [(9, 10), (11, 5)]))}
    seen = {}

    def score(model, members, method):
        seen.setdefault(len(seen), model)
        return {"composed": 0.0}

    family = TaskFamily(experts=data, libraries={"both": ("X", "Y")}, shots=data["X"][:1], score=score,
                        oracle=lambda per, members: per[0])
    setting = SimpleNamespace(lora=LoRAConfig(rank=2, alpha=4.0), reuse=ReuseOptions(), methods=(),
                              finetune=dataclasses.replace(tiny_finetune(), target_acc=None, steps=6))
    out = run_protocol(family, Backend(base, role_modules(base), "cpu"), setting, 0,
                       joint_full_lr=joint_full_lr)
    return base, before, out, list(seen.values())


def test_joint_full_fine_tune_trains_every_base_weight_of_a_copy():
    base, before, out, models = full_ft_run(1e-2)
    assert list(out["models"]) == ["base", "single/X", "single/Y", "joint/both", "joint_full/both"]
    assert out["experts"]["joint_full/both"]["steps"] == 6
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # the base is untouched
    full = models[-1].state_dict()
    assert set(full) == set(before)  # a plain copy of the base, no adapter
    moved = [k for k in before if not torch.equal(full[k], before[k])]
    assert {"W_E.weight", "W_U.weight", "blocks.0.attn.W_Q.weight", "blocks.0.mlp.W_in.weight"} <= set(moved)
    lora = models[-2].state_dict()  # the joint LoRA keeps the base's embedding
    assert torch.equal(lora["W_E.weight"], before["W_E.weight"])


def test_joint_full_fine_tune_is_off_by_default_and_checks_its_lr():
    _, _, out, _ = full_ft_run(None)
    assert "joint_full/both" not in out["models"] and "joint_full/both" not in out["experts"]
    with pytest.raises(ValueError, match=r"joint_full_lr=0.0: must be > 0"):
        full_ft_run(0.0)
