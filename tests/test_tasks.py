"""Two-hop tasks: graph, tokenizer, formats, corpus splits and ratios, expert sets."""
import numpy as np
import pytest
import torch

from toymodels.tasks import Examples
from toymodels.tasks.experts import ExpertConfig, broadcast_rate, make_expert_set
from toymodels.tasks.knowledge import BOS, EOS, PAD, GraphConfig
from toymodels.tasks.twohop import TwoHopConfig, make_pretraining

GRAPH = GraphConfig(n_entities=20, n_relations=3, n_new=20)


def pretraining(fmt="latent", seed=0, **kw):
    return make_pretraining(TwoHopConfig(graph=GRAPH, fmt=fmt, **kw), np.random.default_rng(seed))


def chain_set(chains):
    return {tuple(int(x) for x in c) for c in chains}


def test_graph_is_seeded_and_functional():
    a, b, c = pretraining(seed=0), pretraining(seed=0), pretraining(seed=1)
    assert np.array_equal(a.graph.objects, b.graph.objects)
    assert torch.equal(a.train.tokens, b.train.tokens)
    assert not np.array_equal(a.graph.objects, c.graph.objects)
    assert a.graph.objects.shape == (20, 3)
    assert a.graph.objects.min() >= 0 and a.graph.objects.max() < 20


def test_tokenizer_ids_are_disjoint_and_cover_the_vocabulary():
    tok = pretraining().graph.tokenizer
    ids = [PAD, BOS, EOS] + [tok.relation(r) for r in range(3)] + \
          [tok.entity(e) for e in range(20)] + list(tok.new_tokens)
    assert sorted(ids) == list(range(GRAPH.d_vocab)) == list(range(tok.d_vocab))
    assert tok.decode([BOS, tok.entity(3), tok.relation(1), tok.new_entity(2), EOS, PAD]) == \
        "BOS e3 r1 n2 EOS"


@pytest.mark.parametrize("fmt", ["latent", "cot"])
def test_formats_follow_the_documented_layout(fmt):
    pre = pretraining(fmt)
    tok, G = pre.graph.tokenizer, pre.graph.objects
    n_atomic = 20 * 3
    atomic = pre.train[:n_atomic]
    e, r = 7, 2  # facts are enumerated entity-major
    row = atomic.tokens[e * 3 + r].tolist()
    assert row[:5] == [BOS, tok.entity(e), tok.relation(r), tok.entity(G[e, r]), EOS]
    assert atomic.answer_mask[e * 3 + r].tolist()[:5] == [False] * 3 + [True, True]
    (e, r1, r2), row = pre.train_chains[0], pre.train.tokens[n_atomic].tolist()
    bridge, answer = pre.graph.two_hop(e, r1, r2)
    head = [BOS, tok.entity(e), tok.relation(r1), tok.relation(r2)]
    assert head[:3] == row[:3] and pre.train.tokens[e * 3 + r1, :3].tolist() == head[:3]  # atomic = prefix
    body = [tok.entity(answer), EOS] if fmt == "latent" else [tok.entity(bridge), tok.entity(answer), EOS]
    assert row[:len(head) + len(body)] == head + body
    assert pre.train.answer_mask[n_atomic].sum().item() == len(body)
    assert pre.train.final_answers[n_atomic].item() == tok.entity(answer)


def test_chain_splits_are_disjoint_and_held_out_fraction_holds():
    pre = pretraining(heldout_frac=0.25, ood_frac=0.2)
    splits = [chain_set(c) for c in (pre.train_chains, pre.val_id_chains, pre.test_id_chains,
                                      pre.test_ood_chains)]
    train, val_id, test_id, ood = splits
    assert sum(map(len, splits)) == len(set().union(*splits)) == 20 * 3 * 3  # one split per chain
    assert {c[0] for c in ood} == set(pre.ood_entities.tolist()) and len(pre.ood_entities) == 4
    assert not {c[0] for c in train | test_id} & set(pre.ood_entities.tolist())
    assert len(val_id) + len(test_id) == round(0.25 * 16 * 9) and abs(len(val_id) - len(test_id)) <= 1
    assert "test_ood" in pre.eval_sets


def test_two_hop_ratio_sets_the_corpus_mix_and_too_large_a_ratio_raises():
    pre = pretraining(two_hop_ratio=1.5)
    assert len(pre.train_chains) == round(1.5 * 60)
    assert len(pre.train) == 60 + len(pre.train_chains)
    with pytest.raises(ValueError, match=r"task.two_hop_ratio=50.*allowed <= "):
        pretraining(two_hop_ratio=50.0)


@pytest.mark.parametrize("field,value", [("heldout_frac", 0.0), ("ood_frac", 1.0), ("fmt", "yaml"),
                                         ("two_hop_ratio", -1.0), ("n_eval", 0)])
def test_invalid_task_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"task.{field}="):
        TwoHopConfig(**{field: value})


@pytest.mark.parametrize("field,value,low", [("n_entities", 1, 2), ("n_relations", 1, 2), ("n_new", -1, 0)])
def test_invalid_graph_config_names_field_value_and_bound(field, value, low):
    with pytest.raises(ValueError, match=f"^graph.{field}={value}: must be an integer >= {low}$"):
        GraphConfig(**{field: value})
    GraphConfig(**{field: low})  # the bound itself is allowed


@pytest.mark.parametrize("fam", ["F", "H", "R"])
def test_new_entities_never_appear_in_pretraining_and_split_F_uses_only_them(fam):
    pre = pretraining("cot")
    new = set(pre.graph.tokenizer.new_tokens)
    assert not new & set(pre.train.tokens.unique().tolist())
    es = make_expert_set(pre, ExpertConfig(n_facts=3, n_distractors=1), fam, np.random.default_rng(1))
    A, B, C = (set(es.chains[:, i].tolist()) for i in (0, 3, 4))
    assert len(A) == len(B) == 3  # distinct subjects and bridges
    if fam == "F":
        assert A | B | C | set(es.facts["D0"][:, [0, 2]].ravel().tolist()) <= new
    elif fam == "H":
        assert A <= new and not (B | C) & new
        G, tok = pre.graph.objects, pre.graph.tokenizer
        assert all(c == tok.entity(G[b - tok.entity(0), es.r2]) for b, c in es.chains[:, 3:])
    else:
        assert not (A | B | C) & new


def test_split_R_edits_are_counterfactual():
    pre = pretraining()
    es = make_expert_set(pre, ExpertConfig(n_facts=4, n_distractors=1), "R", np.random.default_rng(2))
    G, e0 = pre.graph.objects, pre.graph.tokenizer.entity(0)
    for a, r1, r2, b, c in es.chains:
        assert b - e0 != G[a - e0, r1] and c - e0 != G[b - e0, r2] and c - e0 != G[G[a - e0, r1], r2]


@pytest.mark.parametrize("fmt", ["latent", "cot"])
def test_expert_data_are_disjoint_and_compose_to_the_ac_set(fmt):
    pre = pretraining(fmt)
    es = make_expert_set(pre, ExpertConfig(n_facts=2, n_distractors=2), "F", np.random.default_rng(0))
    assert es.experts == ["AB", "BC", "AC", "D0", "D1"]
    assert es.r1 != es.r2
    assert np.array_equal(es.facts["AB"][:, 2], es.facts["BC"][:, 0])  # B is the bridge
    subjects = [set(es.facts[n][:, 0].tolist()) for n in ("AB", "BC", "D0", "D1")]
    assert sum(map(len, subjects)) == len(set().union(*subjects))
    assert {es.facts[n][0, 1] for n in ("D0", "D1")}.isdisjoint({es.r1, es.r2})
    assert torch.equal(es.train["AC"].tokens, es.composed.tokens)
    assert torch.equal(es.composed.final_answers, torch.tensor(es.chains[:, 4]))
    assert es.composed.answer_mask.sum(1).eq(2 if fmt == "latent" else 3).all()


def test_shared_template_adds_two_hop_rows_over_other_entities():
    pre = pretraining()
    plain = make_expert_set(pre, ExpertConfig(n_facts=2, n_distractors=0), "F", np.random.default_rng(0))
    shared = make_expert_set(pre, ExpertConfig(n_facts=2, n_distractors=0, shared_template=3), "F",
                             np.random.default_rng(0))
    for name in ("AB", "BC"):
        extra = shared.train[name][2:]
        assert len(plain.train[name]) == 2 and len(extra) == 3
        assert (extra.tokens[:, 2:4] == torch.tensor([pre.graph.tokenizer.relation(r)
                                                      for r in (shared.r1, shared.r2)])).all()
        assert not set(extra.tokens[:, 1].tolist()) & set(shared.chains[:, 0].tolist())
    assert torch.equal(shared.train["AC"].tokens, plain.train["AC"].tokens)


def test_controls_avoid_the_new_answers_and_broadcast_rate_counts_them():
    pre = pretraining()
    es = make_expert_set(pre, ExpertConfig(n_facts=3, n_distractors=1, n_control=10), "R",
                         np.random.default_rng(0))
    for name, control in es.controls.items():
        assert len(control.questions) > 0
        assert not set(control.questions.final_answers.tolist()) & set(control.new_answers)
    control = es.controls["AC"]
    assert set(control.new_answers) == set(es.chains[:, 4].tolist())
    n = len(control.questions)
    fake = torch.tensor([control.new_answers[0]] * (n // 2) + [0] * (n - n // 2))
    assert broadcast_rate(fake, control) == pytest.approx((n // 2) / n)


@pytest.mark.parametrize("fam,n_facts,needed", [("F", 5, "needs 25 new entity tokens"),
                                                ("H", 11, "needs 22 new entity tokens"),
                                                ("R", 5, "needs 25 familiar")])
def test_more_facts_than_entities_raises_naming_field_value_and_allowed(fam, n_facts, needed):
    pre = pretraining()  # 20 new tokens, 20 familiar entities
    with pytest.raises(ValueError, match=f"experts.n_facts={n_facts}.*{needed}.*allowed n_facts <= "):
        make_expert_set(pre, ExpertConfig(n_facts=n_facts, n_distractors=1), fam, np.random.default_rng(0))
    with pytest.raises(ValueError, match="experts.n_facts=0: must be an integer >= 1"):
        ExpertConfig(n_facts=0)


def test_examples_cat_pads_and_keeps_answers():
    a = Examples(torch.tensor([[1, 5, 6, 2]]), torch.tensor([[0, 0, 1, 1]], dtype=torch.bool))
    b = Examples(torch.tensor([[1, 5, 7, 9, 6, 8, 2]]), torch.tensor([[0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool))
    both = Examples.cat([a, b])
    assert both.tokens.shape == (2, 7) and both.tokens[0, 4:].tolist() == [PAD] * 3
    assert both.final_answers.tolist() == [6, 8]
    with pytest.raises(ValueError, match="same"):
        Examples(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool))


def test_split_O_subjects_are_ood_entities_that_start_no_pretraining_chain():
    """Split O: A_i are OOD entities (atomic facts pretrained, no chain starts there), B and C
    in distribution, edits counterfactual as in R."""
    pre = pretraining(ood_frac=0.25)  # 5 of 20 entities
    es = make_expert_set(pre, ExpertConfig(n_facts=3, n_distractors=1), "O", np.random.default_rng(0))
    tok, G = pre.graph.tokenizer, pre.graph.objects
    e0, ood = tok.entity(0), set(pre.ood_entities.tolist())
    A, B, C = (es.chains[:, i] - e0 for i in (0, 3, 4))
    assert set(A.tolist()) <= ood and not (set(B.tolist()) | set(C.tolist())) & ood
    assert not set(A.tolist()) & set(pre.train_chains[:, 0].tolist())  # never a chain's subject
    # rows of the corpus starting at A can only be atomic facts (A starts no chain, checked above)
    atomic_subjects = set((pre.train.tokens[:, 1] - e0).tolist())
    assert set(A.tolist()) <= atomic_subjects  # but their atomic facts were pretrained
    for a, r1, r2, b, c in zip(A, es.chains[:, 1], es.chains[:, 2], B, C):
        assert b != G[a, r1] and c != G[b, r2] and c != G[G[a, r1], r2]


def test_split_O_without_enough_ood_entities_raises_naming_the_fix():
    with pytest.raises(ValueError, match=r"split O needs 3 out-of-distribution entities, the corpus has 0; "
                                         r"raise task.ood_frac"):
        make_expert_set(pretraining(), ExpertConfig(n_facts=3), "O", np.random.default_rng(0))
    with pytest.raises(ValueError, match="must be one of F, H, R, O"):
        make_expert_set(pretraining(), ExpertConfig(n_facts=3), "X", np.random.default_rng(0))
