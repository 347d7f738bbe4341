"""The training loop: memorisation, answer-only loss, frozen params, schedule, determinism,
exact match (teacher forcing == greedy decoding), config validation."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toymodels import train as train_module
from toymodels.model import GPT, ModelConfig
from toymodels.tasks import Examples
from toymodels.tasks.knowledge import GraphConfig
from toymodels.tasks.twohop import TwoHopConfig, make_pretraining
from toymodels.train import (TrainConfig, answer_loss, exact_match, exact_match_rows, greedy_decode,
                             greedy_final_answers, train)

PRE = make_pretraining(TwoHopConfig(graph=GraphConfig(n_entities=8, n_relations=2, n_new=2), fmt="cot",
                                    n_eval=32), np.random.default_rng(0))
MODEL = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, d_vocab=PRE.graph.tokenizer.d_vocab, n_ctx=8)
ATOMIC = PRE.train[:16]  # 16 atomic facts


def gpt(seed=0):
    return GPT(MODEL, generator=torch.Generator().manual_seed(seed))


def fit(model, data, steps=150, seed=0, probe_misses=0, **kw):
    cfg = TrainConfig(**{**dict(steps=steps, batch_size=16, lr=3e-3, weight_decay=0.0, warmup_steps=min(5, steps - 1),
                                eval_every=50), **kw})
    return train(model, data, cfg, torch.Generator().manual_seed(seed), {"facts": data}, device="cpu",
                 probe_misses=probe_misses)


def test_tiny_model_memorises_a_tiny_set_and_loss_decreases():
    result = fit(gpt(), ATOMIC, steps=200)
    assert result.final()["facts"] == 1.0
    assert result.losses[-1] < 0.1 * result.losses[0]
    assert result.eval_steps == [50, 100, 150, 200] and result.steps == 200 and result.seconds > 0


def test_target_accuracy_stops_training_early():
    result = fit(gpt(), ATOMIC, steps=1000, eval_every=20, target_acc=1.0, target_set="facts")
    assert result.reached_target and result.steps < 1000 and result.steps % 20 == 0


def test_only_parameters_with_requires_grad_change():
    model = gpt()
    model.W_E.requires_grad_(False)
    model.blocks[0].requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, ATOMIC, steps=5, weight_decay=0.5, decay_embeddings=True)
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == p.requires_grad, name


def test_embeddings_are_not_decayed_by_default_so_unseen_tokens_keep_their_init():
    model = gpt()
    unseen = list(PRE.graph.tokenizer.new_tokens)
    before = model.W_E.weight[unseen].detach().clone()
    fit(model, ATOMIC, steps=20, weight_decay=1.0)
    assert torch.equal(model.W_E.weight[unseen], before)
    fit(model, ATOMIC, steps=20, weight_decay=1.0, decay_embeddings=True)
    assert model.W_E.weight[unseen].norm() < before.norm()


def test_loss_is_cross_entropy_on_answer_tokens_only():
    model, batch = gpt(), PRE.train[:4]  # atomic rows: 5 tokens + 2 PAD in the corpus
    assert batch.tokens.shape[1] == 7 and not batch.answer_mask[:, 5:].any()
    logits = model(batch.tokens[:, :-1])
    mask = batch.answer_mask[:, 1:]
    expected = F.cross_entropy(logits[mask], batch.tokens[:, 1:][mask])
    torch.testing.assert_close(answer_loss(model, batch), expected)
    tail = batch.tokens.clone()
    tail[:, 5:] = 5  # unscored positions after EOS: the loss must not see them
    torch.testing.assert_close(answer_loss(model, Examples(tail, batch.answer_mask)), expected)
    wider = batch.answer_mask.clone()
    wider[:, 1] = True  # scoring a question token changes the loss (the check can fail)
    assert not torch.isclose(answer_loss(model, Examples(batch.tokens, wider)), expected)


@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
def test_teacher_forced_exact_match_equals_greedy_decoding(trained):
    model = gpt()
    data = PRE.train
    if trained:
        fit(model, data, steps=150)
    greedy = greedy_decode(model, data)
    gold_ok = ((greedy == data.tokens) | ~data.answer_mask).all(1)
    assert torch.equal(exact_match_rows(model, data), gold_ok)
    assert torch.equal(greedy_final_answers(model, data), greedy.gather(1, data.final_answer_pos[:, None])[:, 0])
    if trained:
        assert 0 < gold_ok.float().mean() <= 1
        assert exact_match(model, data) == pytest.approx(gold_ok.float().mean().item())


def test_same_generator_seed_gives_the_same_run():
    a, b = fit(gpt(), ATOMIC, steps=30, seed=3), fit(gpt(), ATOMIC, steps=30, seed=3)
    assert a.losses == b.losses
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_warmup_then_cosine_or_linear_decay_to_the_floor():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_frac=0.1)
    assert cfg.lr_factor(0) == pytest.approx(0.1) and cfg.lr_factor(9) == pytest.approx(1.0)
    assert cfg.lr_factor(10) == pytest.approx(1.0) and cfg.lr_factor(100) == pytest.approx(0.1)
    assert cfg.lr_factor(55) == pytest.approx(0.55)  # cosine midpoint: halfway to the floor
    linear = TrainConfig(steps=100, warmup_steps=0, schedule="linear", min_lr_frac=0.0)
    assert linear.lr_factor(25) == pytest.approx(0.75)


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_share_to_the_floor():
    """Warmup-stable-decay: warmup, lr held at its peak, then a straight line down over the
    last ``decay_frac`` of the post-warmup steps, reaching ``min_lr_frac`` on the last step;
    ``decay_frac`` is an opt-in field, so configs without it keep their cache keys."""
    cfg = TrainConfig(steps=110, warmup_steps=10, schedule="wsd", decay_frac=0.2, min_lr_frac=0.1)
    assert cfg.lr_factor(0) == pytest.approx(0.1) and cfg.lr_factor(9) == pytest.approx(1.0)
    assert [cfg.lr_factor(s) for s in (10, 50, 89)] == pytest.approx([1.0, 1.0, 1.0])  # stable
    decay = [cfg.lr_factor(s) for s in range(90, 110)]  # 20 = 0.2 x 100 post-warmup steps
    assert decay[0] < 1.0 and decay[-1] == pytest.approx(0.1)
    assert np.diff(decay) == pytest.approx([-0.9 / 20] * 19)  # linear
    longer = dataclasses.replace(cfg, decay_frac=0.5)
    assert longer.lr_factor(59) == pytest.approx(1.0) and longer.lr_factor(60) < 1.0
    assert "decay_frac" not in TrainConfig().to_dict() and "decay_frac" in longer.to_dict()
    with pytest.raises(ValueError, match="decay_frac"):
        TrainConfig(decay_frac=0.0)


def test_progress_false_prints_nothing(capsys):
    fit(gpt(), ATOMIC, steps=3)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize("field,value,allowed", [
    pytest.param("lr", 0.0, "> 0", id="lr=0"), pytest.param("lr", -1e-3, "> 0", id="lr<0"),
    pytest.param("steps", 0, ">= 1", id="steps=0"), pytest.param("weight_decay", -0.1, ">= 0", id="wd<0"),
    pytest.param("warmup_steps", 3000, "in [0, steps)", id="warmup>=steps"),
    pytest.param("target_acc", 1.5, "in (0, 1]", id="target>1"),
    pytest.param("schedule", "step", "cosine, linear, constant", id="schedule"),
])
def test_invalid_train_config_names_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{field: value})
    assert f"train.{field}={value!r}" in str(info.value) and allowed in str(info.value)


def test_unknown_target_set_and_bad_device_raise():
    with pytest.raises(ValueError, match="train.target_set='nope'"):
        fit(gpt(), ATOMIC, steps=2, target_set="nope")
    with pytest.raises(ValueError, match="device='tpu'"):
        train(gpt(), ATOMIC, TrainConfig(steps=2, warmup_steps=0), torch.Generator(), device="tpu")


def test_probing_missed_rows_changes_no_step_loss_weight_or_final_score():
    """train(probe_misses=k) skips full evals while a missed row still misses: the stopping
    step, losses, weights and final score are those of scoring every row at every eval."""
    kw = dict(steps=1000, eval_every=5, target_acc=1.0)
    full, probed = fit(gpt(), ATOMIC, **kw), fit(gpt(), ATOMIC, probe_misses=4, **kw)
    assert probed.reached_target and full.reached_target and probed.steps == full.steps
    assert probed.losses == full.losses and probed.final() == full.final() == {"facts": 1.0}
    assert all(torch.equal(p, q) for p, q in zip(probed.model.parameters(), full.model.parameters()))
    skipped = [np.isnan(v) for v in probed.curves["facts"]]
    assert 0 < sum(skipped) < len(skipped)  # the probe did skip evals, and not all of them
    assert [v for v, s in zip(probed.curves["facts"], skipped) if not s] == \
           [v for v, s in zip(full.curves["facts"], skipped) if not s]


def test_probing_scores_every_row_at_the_last_step_when_the_target_is_not_reached():
    kw = dict(steps=20, eval_every=5, target_acc=1.0, warmup_steps=2)
    full, probed = fit(gpt(), ATOMIC, **kw), fit(gpt(), ATOMIC, probe_misses=2, **kw)
    assert not probed.reached_target and probed.steps == 20
    assert probed.curves["facts"][-1] == full.curves["facts"][-1] < 1.0
    with pytest.raises(ValueError, match="probe_misses=-1: must be an integer >= 0"):
        fit(gpt(), ATOMIC, probe_misses=-1, **kw)


@pytest.mark.parametrize("target, k, passing, out_of_reach", [
    (1.0, 16, {3}, True),          # row 7 still misses: 0.9 < 1.0
    (0.9, 16, {3}, False),         # one miss is allowed at 0.9: left to the full eval
    (0.9, 16, set(), True),        # both still miss: 0.8 < 0.9
    (1.0, 1, {3}, False),          # only row 3 is probed, and it passes now
    (1.0, 16, {3, 7}, False),      # both pass now
])
def test_miss_probe_is_out_of_reach_only_when_its_misses_alone_keep_the_set_below_target(
        monkeypatch, target, k, passing, out_of_reach):
    rows = Examples(torch.arange(10)[:, None].repeat(1, 3), torch.zeros(10, 3, dtype=torch.bool))
    verdicts = {i: i not in (3, 7) for i in range(10)}  # the full eval misses rows 3 and 7
    monkeypatch.setattr(train_module, "_eval_rows",
                        lambda model, ex: torch.tensor([verdicts[int(i)] for i in ex.tokens[:, 0]]))
    probe = train_module._MissProbe(rows, k, target)
    assert probe.full(None) == pytest.approx(0.8) and probe.missed.tolist() == [3, 7]
    verdicts.update({i: True for i in passing})
    assert probe.out_of_reach(None) is out_of_reach
