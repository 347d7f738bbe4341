"""Stacked training (issue 11): K LoRAs on one base, and S base models, each trained in one
forward/backward per step, equal K (S) sequential ``train`` runs with the same seeds."""
import dataclasses

import numpy as np
import pytest
import torch

from toymodels.adapters import extract_adapter, random_adapter
from toymodels.lora import LoRAConfig, LoRALinear, inject_lora
from toymodels.model import GPT, ModelConfig, role_modules
from toymodels.stacked import train_stacked
from toymodels.stacked_base import train_stacked_models
from toymodels.stacked_lora import StackedLoRALinear, stack_loras, train_stacked_loras
from toymodels.tasks import Examples
from toymodels.tasks.knowledge import GraphConfig
from toymodels.tasks.twohop import TwoHopConfig, make_pretraining
from toymodels.train import TrainConfig, train
from conftest import TINY_GPT, seeded

# binding clip (the tiny runs' gradient norms are ~0.1-1) and nonzero decay, so both are tested
FINETUNE = TrainConfig(steps=20, batch_size=6, lr=3e-2, weight_decay=0.1, warmup_steps=2, grad_clip=0.05,
                       eval_every=4, target_acc=1.0, target_set="facts")
LORAS = [LoRAConfig(rank=1, alpha=2.0), LoRAConfig(rank=2, alpha=3.0), LoRAConfig(rank=4, alpha=6.0, rslora=True)]  # scales 2, 1.5, 3


def rows(seed: int, n: int, T: int) -> Examples:
    """``n`` random facts of ``T`` tokens whose last two tokens are the answer."""
    tokens = torch.randint(1, TINY_GPT.d_vocab, (n, T), generator=seeded(seed))
    mask = torch.zeros(n, T, dtype=torch.bool)
    mask[:, -2:] = True
    return Examples(tokens, mask)


def assert_close_rel(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-5) -> None:
    """Max deviation within ``rtol`` of the reference's largest entry (Adam can leave some
    entries near zero, where an elementwise relative test means nothing)."""
    assert want.abs().max() > 0, "reference is zero: the comparison would be vacuous"
    err = (got - want).abs().max() / want.abs().max()
    assert err <= rtol, f"relative deviation {err:.2e} > {rtol:.0e}"


# Equivalence runs in float64, where rounding is ~1e-13 and any real difference shows; a
# float32 test checks the production dtype against float32's own rounding floor.
# Runs 0 and 1 share a batch size (6) and so one stacked run, where run 0 (3 facts, each twice,
# 5 tokens) is memorised and stops at step 4 while run 1 (12 rows, 2 batches an epoch, 6
# tokens) goes on; run 2 (4 rows: batches of 4) is stacked on its own.
DATA = [Examples.cat([rows(1, 3, 5)] * 2), rows(2, 12, 6), rows(3, 4, 6)]


@pytest.fixture(scope="module")
def base() -> GPT:
    return GPT(TINY_GPT, generator=seeded(0)).requires_grad_(False)


def lora_runs(dtype: torch.dtype, cfg: TrainConfig = FINETUNE):
    """Three LoRAs (ranks 1, 2, 4 with scales 2, 1.5, 3) on ``DATA``, trained sequentially
    (``pipeline.train_lora``'s recipe, one generator per run) and stacked."""
    base = GPT(TINY_GPT, generator=seeded(0)).requires_grad_(False).to(dtype)
    sequential = []
    for k, (d, lora) in enumerate(zip(DATA, LORAS)):
        gen = seeded(100 + k)
        model = inject_lora(base, lora, role_modules(base), gen)
        result = train(model, d, cfg, gen, {"facts": d}, device="cpu")
        sequential.append((extract_adapter(model, lora), result, gen.get_state()))
    gens = [seeded(100 + k) for k in range(3)]
    adapters, results = train_stacked_loras(base, list(zip(DATA, gens)), LORAS, cfg, device="cpu")
    return sequential, adapters, results, gens


@pytest.fixture(scope="module")
def runs64():
    return lora_runs(torch.float64)


def test_stacked_loras_equal_sequential_runs_with_early_stop_and_unequal_ranks(runs64):
    sequential, adapters, results, gens = runs64
    steps = [r.steps for _, r, _ in sequential]
    assert min(steps) < FINETUNE.steps == max(steps), f"need one early stop and one full run, got {steps}"
    for (want, want_result, want_gen), got, result, gen in zip(sequential, adapters, results, gens):
        assert got.config == want.config and list(got.factors) == list(want.factors)
        for path, f in want.factors.items():
            assert got.factors[path].A.shape == f.A.shape and got.factors[path].scale == f.scale
            assert_close_rel(got.factors[path].A, f.A, 1e-9)
            assert_close_rel(got.factors[path].B, f.B, 1e-9)  # nonzero: asserted inside
        assert (result.steps, result.eval_steps, result.reached_target) == \
               (want_result.steps, want_result.eval_steps, want_result.reached_target)
        assert result.curves == want_result.curves
        np.testing.assert_allclose(result.losses, want_result.losses, rtol=1e-9)
        assert torch.equal(gen.get_state(), want_gen), "the generator drew a different number of batches"
        tokens = DATA[1].tokens[:, :-1]
        assert_close_rel(result.model(tokens), want_result.model(tokens), 1e-9)


def _deviation(got, want) -> float:
    return max(float((g.factors[p].B.double() - w.factors[p].B.double()).abs().max() / w.factors[p].B.abs().max())
               for g, w in zip(got, want) for p in w.factors)


def test_stacked_loras_in_float32_stay_within_float32_rounding():
    """The production dtype at lr 1e-2 (clip 0.05): measured 7e-6 relative from the sequential
    float32 runs after 20 steps, the same as the sequential float32 runs' own distance from
    float64 (8e-6); 5e-5 leaves room for another BLAS. At FINETUNE's lr 3e-2 float32 training
    is chaotic (the sequential float32 run lands 5% from its float64 twin), so no float32
    comparison is tight there; float64 is what pins equality."""
    cfg = dataclasses.replace(FINETUNE, lr=1e-2)
    sequential, adapters, results, _ = lora_runs(torch.float32, cfg)
    assert [r.steps for r in results] == [r.steps for _, r, _ in sequential] and min(r.steps for r in results) < 20
    assert _deviation(adapters, [a for a, _, _ in sequential]) <= 5e-5


def test_stacked_lora_linear_applies_adapter_k_to_row_block_k(base):
    path = "blocks.0.mlp.W_in"
    layers = []
    for k, lora in enumerate(LORAS):
        adapter = random_adapter(base, lora, role_modules(base), seeded(10 + k))
        f = adapter.factors[path]
        layer = LoRALinear(base.get_submodule(path), f.rank, f.scale)
        with torch.no_grad():
            layer.A.copy_(f.A)
            layer.B.copy_(f.B)
        layers.append(layer)
    model = stack_loras([_wrap(base, path, layer) for layer in layers])[0]
    stacked = model.get_submodule(path)
    assert isinstance(stacked, StackedLoRALinear) and stacked.A.shape == (3, 4, TINY_GPT.d_model)
    x = torch.randn(3 * 2, 5, TINY_GPT.d_model, generator=seeded(4))  # (K * B, T, d_in)
    want = torch.cat([layer(x[2 * k:2 * k + 2]) for k, layer in enumerate(layers)])
    torch.testing.assert_close(stacked(x), want)
    assert not torch.allclose(want, base.get_submodule(path)(x)), "adapters must be nonzero"


def _wrap(base, path, layer):
    import copy
    model = copy.deepcopy(base)
    model.set_submodule(path, layer)
    return model


def test_padded_rank_rows_stay_exactly_zero(base):
    data = [rows(1, 6, 6), rows(2, 6, 6)]
    models = [inject_lora(base, lora, role_modules(base), seeded(k)) for k, lora in enumerate(LORAS[::2])]
    template, params, frozen = stack_loras(models)  # ranks 1 and 4: adapter 0 padded by 3
    final = {}

    def forward(state, tokens):
        return torch.func.functional_call(template, state, (tokens.flatten(0, 1),)).unflatten(0, tokens.shape[:2])

    def finish(k, state):
        final[k] = state
        return template

    train_stacked(forward, params, {k: True for k in params}, data, [seeded(5), seeded(6)],
                  TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup_steps=1, eval_every=3), finish,
                  frozen=frozen, device="cpu")
    for name, p in final[0].items():
        if name.endswith(".A"):
            assert torch.all(p[1:] == 0) and p[0].abs().sum() > 0
        elif name.endswith(".B"):
            assert torch.all(p[:, 1:] == 0) and p[:, 0].abs().sum() > 0


def test_stacked_lora_inputs_are_validated(base):
    runs = [(rows(1, 4, 6), seeded(1))]
    with pytest.raises(ValueError, match="dropout"):
        train_stacked_loras(base, runs, LoRAConfig(dropout=0.1), FINETUNE, device="cpu")
    with pytest.raises(ValueError, match="targets and layers"):
        train_stacked_loras(base, runs * 2, [LoRAConfig(), LoRAConfig(targets=("q",))], FINETUNE, device="cpu")
    with pytest.raises(ValueError, match="one config"):
        train_stacked_loras(base, runs, [LoRAConfig()] * 2, FINETUNE, device="cpu")


PRE_CFG = TwoHopConfig(graph=GraphConfig(n_entities=8, n_relations=2, n_new=2), fmt="cot", n_eval=16)
BASE_TRAIN = TrainConfig(steps=20, batch_size=16, lr=3e-3, weight_decay=0.1, warmup_steps=3, eval_every=5,
                         target_acc=0.3, target_set="atomic")


def test_stacked_base_models_equal_sequential_runs():
    """Three seeds, each its own corpus, init and batch order; seed 0 passes the (low) target
    at step 10 and stops while the others go on to step 20."""
    pres = [make_pretraining(PRE_CFG, np.random.default_rng(s)) for s in range(3)]
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, d_vocab=pres[0].graph.tokenizer.d_vocab, n_ctx=8)
    sequential = []
    for s, pre in enumerate(pres):
        gen = seeded(s)
        model = GPT(cfg, generator=gen).double()  # float64: see DTYPES
        sequential.append((model, train(model, pre.train, BASE_TRAIN, gen, pre.eval_sets, device="cpu"), gen))
    gens = [seeded(s) for s in range(3)]
    models = [GPT(cfg, generator=g).double() for g in gens]
    results = train_stacked_models(models, [p.train for p in pres], gens, BASE_TRAIN,
                                   [p.eval_sets for p in pres], device="cpu")
    steps = [r.steps for _, r, _ in sequential]
    assert min(steps) < BASE_TRAIN.steps == max(steps), f"need one early stop and one full run, got {steps}"
    for (want, want_result, want_gen), got, result, gen in zip(sequential, models, results, gens):
        assert result.model is got
        for (name, p), q in zip(want.named_parameters(), got.parameters()):
            assert_close_rel(q, p, 1e-9)
        assert (result.steps, result.curves, result.reached_target) == \
               (want_result.steps, want_result.curves, want_result.reached_target)
        np.testing.assert_allclose(result.losses, want_result.losses, rtol=1e-9)
        assert torch.equal(gen.get_state(), want_gen.get_state())


def test_stacked_models_reject_mismatched_inputs():
    a, b = GPT(TINY_GPT, seeded(0)), GPT(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, d_vocab=11,
                                                       n_ctx=6), seeded(1))
    data, cfg = rows(1, 4, 6), TrainConfig(steps=2, batch_size=4, warmup_steps=0)
    with pytest.raises(ValueError, match="same parameter names"):
        train_stacked_models([a, b], [data, data], [seeded(0), seeded(1)], cfg, device="cpu")
    with pytest.raises(ValueError, match="one of each per model"):
        train_stacked_models([a], [data, data], [seeded(0)], cfg, device="cpu")
    with pytest.raises(ValueError, match="target_set"):
        train_stacked_models([a], [data], [seeded(0)], TrainConfig(steps=2, warmup_steps=0, target_set="x"),
                             device="cpu")


@pytest.mark.gpu
def test_stacked_loras_on_cuda_match_cpu_and_sync_only_per_eval_window():
    """Opt-in (-m gpu). The same float64 run on CUDA gives the CPU factors; with the sync
    debug mode on, a run of 16 steps makes as many host syncs as one of 4 (one evaluation
    window each): the step loop itself never waits on the host."""
    import warnings

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    base = GPT(TINY_GPT, generator=seeded(0)).requires_grad_(False).double()
    runs = lambda: [(d, seeded(100 + k)) for k, d in enumerate(DATA)]  # noqa: E731
    on_cpu, _ = train_stacked_loras(base, runs(), LORAS, FINETUNE, device="cpu")
    on_cuda, _ = train_stacked_loras(base, runs(), LORAS, FINETUNE, device="cuda")
    for want, got in zip(on_cpu, on_cuda):
        for path, f in want.factors.items():
            assert_close_rel(got.factors[path].B.cpu(), f.B, 1e-9)

    def syncs(steps: int) -> int:
        cfg = dataclasses.replace(FINETUNE, steps=steps, eval_every=steps, target_acc=None, target_set=None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_stacked_loras(base, runs(), LORAS, cfg, device="cuda")
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(4) == syncs(16)


# --- host syncs (issue 11, item 5): the step loops must not wait on the device every step ---

def _reads(monkeypatch, fit, steps: int):
    """Host reads of ``fit(cfg)`` with one evaluation window of ``steps`` steps (no early stop)."""
    from host_sync import host_reads

    cfg = dataclasses.replace(FINETUNE, steps=steps, eval_every=steps, target_acc=None, target_set=None,
                              warmup_steps=1)
    with host_reads(monkeypatch) as calls:
        fit(cfg)
    return calls


def _fit_loras(cfg):
    base = GPT(TINY_GPT, generator=seeded(0)).requires_grad_(False)
    train_stacked_loras(base, [(d, seeded(100 + k)) for k, d in enumerate(DATA)], LORAS, cfg, device="cpu")


def _fit_models(cfg):
    gens = [seeded(s) for s in range(2)]
    train_stacked_models([GPT(TINY_GPT, generator=g) for g in gens], DATA[1:], gens, cfg,
                         [{"facts": d} for d in DATA[1:]], device="cpu")


def _fit_one(cfg):
    gen = seeded(0)
    train(GPT(TINY_GPT, generator=gen), DATA[1], cfg, gen, {"facts": DATA[1]}, device="cpu")


@pytest.mark.parametrize("fit", [_fit_loras, _fit_models], ids=["stacked_loras", "stacked_models"])
def test_stacked_step_loops_read_the_host_only_per_evaluation_window(monkeypatch, fit):
    """A run of 12 steps makes exactly the host reads of a run of 3 (one evaluation window
    each), and it makes some (the per-window read of accuracies and losses): the guard sees
    reads, and none of them is per step."""
    few, many = _reads(monkeypatch, fit, 3), _reads(monkeypatch, fit, 12)
    assert sum(few.values()) > 0, "the guard saw no host read at all: it is not watching"
    assert many == few, f"per-step host reads: {dict(many - few)}"


@pytest.mark.xfail(strict=True, reason="toymodels.train.train still reads the host per step in answer_loss: "
                   "logits[mask] and tokens[mask] (bool-mask indexes: a nonzero + size copy on CUDA each); its "
                   "running loss is read once per eval window since 2026-12-02. When fixed, drop this marker")
def test_toy_train_step_loop_reads_the_host_only_per_evaluation_window(monkeypatch):
    few, many = _reads(monkeypatch, _fit_one, 3), _reads(monkeypatch, _fit_one, 12)
    assert sum(few.values()) > 0
    assert many == few, f"per-step host reads: {dict(many - few)}"
