"""RANK-1 in a trained GPT (toymodels/capacity.py): the one-matrix identity, the Eckart-Young
construction on both sides of rank(D), and the facts and required changes it measures."""
import numpy as np
import pytest
import torch

from theory.merge import eckart_young_error, numerical_rank
from toymodels.capacity import (CapacityConfig, Readout, bound, construction_changes, edit_facts, lora_config,
                                margins, measure_capacity, readout, recalled, required_changes)
from toymodels.lora import inject_lora, lora_modules
from toymodels.model import role_modules
from toymodels.pipeline import train_base
from toymodels.presets import tiny_base
from toymodels.train import TrainConfig


@pytest.fixture(scope="module")
def base():
    return train_base(tiny_base("cot"), seed=0, device="cpu")


def test_edit_facts_are_distinct_counterfactual_edits(base):
    examples, facts = edit_facts(base.pretraining, 16, np.random.default_rng(0))
    assert len(examples) == 16 and facts.shape == (16, 4)
    assert np.all(facts[:, 3] != facts[:, 2])  # new answer differs from the old one
    assert len({(e, r) for e, r, _, _ in facts}) == 16  # distinct (subject, relation)
    assert len(set(facts[:, 3])) == 16  # 16 <= 20 entities: new answers distinct
    assert torch.equal(examples.final_answers, torch.from_numpy(facts[:, 3]))
    with pytest.raises(ValueError, match="capacity.n_facts=61: the graph has only 60"):
        edit_facts(base.pretraining, 61, np.random.default_rng(0))


def test_rank1_lora_on_last_mlp_out_adds_exactly_DW_k_to_the_residual(base):
    """RANK-1's one-matrix setting: with the LoRA on the LAST block's mlp_out, the model's own
    answer logits equal the readout of ``x + DW k`` with keys from the base (an oracle: the
    full forward pass of the LoRA model)."""
    examples, _ = edit_facts(base.pretraining, 8, np.random.default_rng(1))
    state = readout(base.model, examples)
    gen = torch.Generator().manual_seed(0)
    model = inject_lora(base.model, lora_config(base.model.cfg.n_layers, 2), role_modules(base.model), gen)
    (lora,) = lora_modules(model).values()
    with torch.no_grad():
        lora.B.normal_(0, 0.5, generator=gen)  # a NONZERO adapter
        full = model(examples.tokens[:, :-1])[torch.arange(8), examples.final_answer_pos - 1]  # (8, d_vocab)
        change = state.keys @ lora.factors.delta.T  # (8, d_model)
        via_keys = base.model.W_U(base.model.ln_final(state.resid + change))
    assert change.abs().max() > 1e-2
    torch.testing.assert_close(via_keys, full, atol=1e-5, rtol=1e-5)
    assert torch.equal(recalled(base.model, state, change), full.argmax(-1) == examples.final_answers)


def _synthetic(n_facts=6, d_mlp=10, d_model=8, seed=0) -> tuple[Readout, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = Readout(keys=torch.randn(n_facts, d_mlp, generator=g), resid=torch.zeros(n_facts, d_model),
                    answers=torch.zeros(n_facts, dtype=torch.long))
    return state, torch.randn(n_facts, d_model, generator=g)


@pytest.mark.parametrize("rank", [pytest.param(r, id=f"r={r}") for r in (1, 3, 5, 6, 8)])
def test_rank1_construction_is_exact_at_rank_D_and_the_EY_tail_below(rank):
    """RANK-1: ``min ||DW K - D||_F`` is the Eckart-Young tail of D, zero once r >= rank(D)."""
    state, D = _synthetic()
    rank_D = numerical_rank(D.double())
    built = construction_changes(state, D, rank)
    error = float(torch.linalg.matrix_norm(built - D.double()))
    tail = eckart_young_error(D.double().T, rank)
    if rank >= rank_D:
        assert error < 1e-9
    else:
        assert tail > 1e-3 and error == pytest.approx(tail, rel=1e-9)


def test_required_changes_give_every_fact_its_margin_and_rank1_bound(base):
    examples, _ = edit_facts(base.pretraining, 8, np.random.default_rng(2))
    state = readout(base.model, examples)
    assert not recalled(base.model, state, torch.zeros_like(state.resid)).any()  # the base answers the old facts
    D = required_changes(base.model, state, margin=1.0, steps=300)
    reached = margins(base.model, state, D).detach()
    assert reached.min() > 0.3 and recalled(base.model, state, D).all()  # LayerNorm caps it below 1 here
    smaller = margins(base.model, state, 0.5 * D).detach()  # half the change no longer reaches it everywhere
    assert smaller.min() < reached.min()
    assert [bound(r, 8) for r in (1, 4, 8, 16)] == [1, 4, 8, 8]


@pytest.mark.parametrize("rank", [pytest.param(1, id="r=1"), pytest.param(32, id="r=32")])
def test_measure_capacity_counts_and_errors_are_consistent(base, rank):
    ft = TrainConfig(steps=40, batch_size=8, lr=1e-2, weight_decay=0.0, warmup_steps=2, eval_every=10,
                     target_acc=1.0, target_set="facts")
    out = measure_capacity(base.model, base.pretraining, CapacityConfig(n_facts=8, solve_steps=200, finetune=ft),
                           rank, np.random.default_rng(0), torch.Generator().manual_seed(0))
    examples, _ = edit_facts(base.pretraining, 8, np.random.default_rng(0))  # the edits measure_capacity drew
    logits = base.model(examples.tokens[:, :-1])[torch.arange(8), examples.final_answer_pos - 1]  # (8, d_vocab)
    already = int((logits.argmax(-1) == examples.final_answers).sum())  # the tiny base's chance hits, full forward
    assert out["bound"] == min(rank, 8) and out["recalled_required"] == 8 and out["recalled_base"] == already
    assert 0 <= out["recalled_trained"] <= 8 and 0 <= out["recalled_construction"] <= 8
    assert out["error_construction"] == pytest.approx(out["ey_tail"], abs=1e-6)  # EY construction is optimal
    assert out["error_trained"] >= out["ey_tail"] - 1e-4  # no rank-r update beats the tail
    if rank >= out["rank_required"]:
        assert out["ey_tail"] == 0.0 and out["recalled_construction"] == 8
    else:
        assert out["ey_tail"] > 0.0


def test_capacity_config_validation_names_the_field():
    with pytest.raises(ValueError, match="capacity.n_facts=0"):
        CapacityConfig(n_facts=0)
    with pytest.raises(ValueError, match="capacity.margin=0"):
        CapacityConfig(margin=0)
