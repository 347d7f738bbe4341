"""New-entity embedding / unembedding rows trained beside a LoRA (toymodels/entity_rows.py):
they move only for the new entities in the data, travel with the adapter through extract,
merge, save and load, and averaging two adapters averages them."""
import dataclasses

import pytest
import torch

from conftest import seeded
from toymodels.adapters import extract_adapter, merge_into_new_model, unmerge
from toymodels.entity_rows import RowDeltas, combine_rows, inject_rows, rows_in
from toymodels.lora import LoRAConfig, inject_lora
from toymodels.model import GPT, ModelConfig, role_modules
from toymodels.peft_checkpoint import load_adapter, save_adapter
from toymodels.reuse import average, task_arithmetic
from toymodels.tasks import Examples
from toymodels.train import TrainConfig, train

NEW = range(20, 28)  # the "new entity" tokens of the toy vocabulary below
CFG = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, d_vocab=28, n_ctx=6)
LORA = LoRAConfig(rank=2, alpha=4.0)


def _data(subjects, objects) -> Examples:
    """Rows ``1 s 3 -> o 2``: subject s, relation token 3, answer o (answer mask on o and 2)."""
    tokens = torch.tensor([[1, s, 3, o, 2] for s, o in zip(subjects, objects)])
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 3:] = True
    return Examples(tokens, mask)


def _trained(base, data, seed):
    model = inject_lora(base, LORA, role_modules(base), seeded(seed))
    inject_rows(model, rows_in(data.tokens, NEW))
    train(model, data, TrainConfig(steps=15, batch_size=4, lr=3e-2, weight_decay=0.0, warmup_steps=1,
                                   eval_every=15), seeded(seed + 100), device="cpu")
    return model.eval(), extract_adapter(model, LORA)


@pytest.fixture(scope="module")
def setup():
    base = GPT(CFG, generator=seeded(0)).requires_grad_(False).eval()
    d1 = _data([20, 21, 5], [22, 6, 23])  # new tokens 20, 21, 22, 23
    d2 = _data([23, 24, 7], [8, 25, 24])  # new tokens 23, 24, 25 (23 shared with d1)
    return base, d1, d2, _trained(base, d1, 1), _trained(base, d2, 2)


def test_rows_change_only_for_the_new_entities_in_the_data(setup):
    base, d1, _, (model, adapter), _ = setup
    assert adapter.rows.tokens.tolist() == [20, 21, 22, 23]
    merged = merge_into_new_model(base, adapter)
    for name in ("W_E", "W_U"):
        moved = (merged.get_submodule(name).weight - base.get_submodule(name).weight).abs().sum(1) > 0
        assert moved.nonzero().flatten().tolist() == [20, 21, 22, 23], name
    x = d1.tokens[:, :-1]
    assert torch.allclose(merged(x), model(x), atol=1e-5)  # folded rows + LoRA == the trained model
    # the LoRA alone (rows dropped) is a different model: the rows carry part of the fit
    alone = merge_into_new_model(base, dataclasses.replace(adapter, rows=None))
    assert not torch.allclose(alone(x), model(x), atol=1e-3)
    back = unmerge(merged, adapter)
    assert torch.allclose(back.W_E.weight, base.W_E.weight, atol=1e-6)


def test_average_of_two_adapters_averages_the_row_deltas(setup):
    base, _, _, (_, a1), (_, a2) = setup
    merged = merge_into_new_model(base, average([a1, a2]))
    expected = base.W_E.weight.clone()  # independent oracle: each adapter's deltas / 2 at its own tokens
    for a in (a1, a2):
        expected[a.rows.tokens] += a.rows.embed / 2
    assert torch.allclose(merged.W_E.weight, expected, atol=1e-6)
    assert torch.allclose(merged.W_E.weight[23], base.W_E.weight[23] + (a1.rows.embed[3] + a2.rows.embed[0]) / 2)
    assert torch.equal(merged.W_E.weight[:20], base.W_E.weight[:20])
    summed = task_arithmetic([a1, a2]).rows
    assert torch.allclose(summed.unembed, 2 * average([a1, a2]).rows.unembed, atol=1e-6)


def test_rows_are_saved_beside_the_lora_factors(setup, tmp_path):
    base, _, _, (_, adapter), _ = setup
    save_adapter(adapter, tmp_path)
    assert (tmp_path / "entity_rows.safetensors").exists()
    loaded = load_adapter(tmp_path, base, role_modules(base))
    for field in ("tokens", "embed", "unembed"):
        assert torch.equal(getattr(loaded.rows, field), getattr(adapter.rows, field))
    save_adapter(dataclasses.replace(adapter, rows=None), tmp_path)  # no stale rows left behind
    assert load_adapter(tmp_path, base, role_modules(base)).rows is None


def test_bad_rows_name_the_problem():
    with pytest.raises(ValueError, match="no new-entity token occurs"):
        inject_rows(GPT(CFG, generator=seeded(0)), rows_in(torch.tensor([[1, 2, 3]]), NEW))
    with pytest.raises(ValueError, match="must be \\(n,\\), \\(n, d\\), \\(n, d\\)"):
        RowDeltas(torch.tensor([1, 2]), torch.zeros(3, 4), torch.zeros(3, 4))
    assert combine_rows([None, None]) is None
