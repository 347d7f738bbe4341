"""The fast paths of the pretrained protocol give the numbers of the plain ones (up to float
rounding), on tiny random models with NONZERO adapters:

- ``logits_at`` (the vocabulary matmul only where a loss or a score looks) equals the full
  logits indexed there, for every family with a role map and through PEFT's wrapper;
- ``answer_loss`` and ``exact_match_rows`` (``toymodels.train``), which use it, equal the
  loss and the exact match computed by hand from the full logits, gradients included;
- ``answer_rows`` / ``score_rows`` (rows of all sets sorted by length, batches cut to their
  longest row) equal ``natural.answer_scores`` row by row, with rows answered right and wrong.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from conftest import seeded  # noqa: E402
from test_hf_roles import CASES  # noqa: E402
from toymodels.adapters import apply_adapter, random_adapter  # noqa: E402
from toymodels.hf_roles import role_map  # noqa: E402
from toymodels.lora import LoRAConfig  # noqa: E402
from toymodels.pretrained import LogitsLM, tiny_causal_lm, tiny_llama  # noqa: E402
from toymodels.pretrained_metrics import answer_rows, score_rows  # noqa: E402
from toymodels.tasks import Examples  # noqa: E402
from toymodels.tasks.knowledge import encode  # noqa: E402
from toymodels.tasks.natural import answer_scores  # noqa: E402
from toymodels.train import answer_loss, exact_match_rows, logits_at  # noqa: E402


def adapted(hf_model, seed: int = 0):
    """``LogitsLM(hf_model)`` with a random adapter (nonzero ``B``) on every role it has."""
    lm = LogitsLM(hf_model).eval()
    roles = role_map(hf_model)
    lora = LoRAConfig(rank=2, alpha=4.0, targets=tuple(dict.fromkeys(r for r, _ in roles)))
    adapter = random_adapter(lm, lora, roles, seeded(seed), B_std=0.5)
    assert all(f.B.abs().sum() > 0 for f in adapter.factors.values())
    return apply_adapter(lm, adapter).eval()


def ragged_mask(B: int, T: int, seed: int = 3) -> torch.Tensor:
    """``(B, T)`` bool: each row a run of 1-3 True positions at its own place, one row none."""
    g, at = seeded(seed), torch.zeros(B, T, dtype=torch.bool)
    for b in range(1, B):
        start = int(torch.randint(0, T - 3, (1,), generator=g))
        at[b, start:start + int(torch.randint(1, 4, (1,), generator=g))] = True
    return at


@pytest.mark.parametrize("model_type", list(CASES))
def test_logits_at_equals_the_full_logits_there_for_every_family(model_type):
    make_config, _, _ = CASES[model_type]
    model = adapted(tiny_causal_lm(make_config(), seeded(0)))
    tokens = torch.randint(3, 64, (4, 11), generator=seeded(1))  # (B, T)
    at = ragged_mask(4, 11)
    with torch.no_grad():
        full = model(tokens)[at]  # (n, d_vocab)
        fast = model.logits_at(tokens, at)
    assert fast.shape == full.shape == (int(at.sum()), 64)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the dispatcher picks the model's own method
        torch.testing.assert_close(logits_at(model, tokens, at), full, rtol=1e-5, atol=1e-5)
    assert model.logits_at(tokens, torch.zeros_like(at)).shape == (0, 64)


def test_gemma2_soft_capping_is_kept():
    """Gemma 2 caps its logits (tanh): the fast path runs the family's own output step."""
    make_config, _, _ = CASES["gemma2"]
    config = make_config()
    config.final_logit_softcapping = 0.5  # tiny, so capping changes every logit
    model = LogitsLM(tiny_causal_lm(config, seeded(0))).eval()
    tokens, at = torch.randint(3, 64, (3, 9), generator=seeded(1)), ragged_mask(3, 9)
    with torch.no_grad():
        fast = model.logits_at(tokens, at)
        torch.testing.assert_close(fast, model(tokens)[at], rtol=1e-5, atol=1e-5)
    assert fast.abs().max() <= 0.5


def test_peft_wrapper_logits_at():
    peft = pytest.importorskip("peft")
    from toymodels.peft_backend import PeftLM

    hf = tiny_llama(seeded(0), vocab=64)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # init_lora_weights=False: random, nonzero B
        model = PeftLM(peft.get_peft_model(hf, config)).eval()
    tokens, at = torch.randint(3, 64, (4, 10), generator=seeded(1)), ragged_mask(4, 10)
    with torch.no_grad():
        torch.testing.assert_close(model.logits_at(tokens, at), model(tokens)[at], rtol=1e-5, atol=1e-5)


def rows_of_several_lengths(model, n: int = 14, vocab: int = 64) -> Examples:
    """Rows of 3-9 prompt and 1-3 answer tokens; every other row's answer is the model's own
    greedy continuation (so exact match is True there), the others random."""
    g, rows = seeded(5), []
    for i in range(n):
        prompt = torch.randint(3, vocab, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g).tolist()
        answer = []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            if i % 2 == 0:
                with torch.no_grad():
                    answer.append(int(model(torch.tensor([prompt + answer]))[0, -1].argmax()))
            else:
                answer.append(int(torch.randint(3, vocab, (1,), generator=g)))
        rows.append((prompt, answer))
    return encode(rows)


def test_answer_rows_equal_answer_scores_row_by_row():
    model = adapted(tiny_llama(seeded(0), vocab=64))
    ex = rows_of_several_lengths(model)
    want_exact, want_lp = answer_scores(model, ex)
    assert 0 < int(want_exact.sum()) < len(ex)  # both outcomes are checked
    for batch_size in (3, 64):  # several length-sorted batches, and one
        exact, lp = answer_rows(model, ex, batch_size=batch_size)
        assert torch.equal(exact, want_exact)
        torch.testing.assert_close(lp, want_lp, rtol=1e-5, atol=1e-5)


def test_score_rows_gives_each_set_its_own_rows():
    model = adapted(tiny_llama(seeded(0), vocab=64))
    ex = rows_of_several_lengths(model)
    sets = {"a": ex[:5], "b": ex[5:6], "c": ex[6:], "none": None}
    got = score_rows(model, sets)
    assert list(got) == ["a", "b", "c"]
    for name in got:
        exact, lp = answer_scores(model, sets[name])
        assert torch.equal(got[name][0], exact)
        torch.testing.assert_close(got[name][1], lp, rtol=1e-5, atol=1e-5)


def test_answer_loss_and_exact_match_equal_the_full_logits_computation():
    """Loss, LoRA gradients and exact match through ``logits_at`` against the same quantities
    computed by hand from the full ``(B, T, d_vocab)`` logits."""
    model = adapted(tiny_llama(seeded(0), vocab=64))
    ex = rows_of_several_lengths(model)
    params = [p for n, p in model.named_parameters() if n.endswith((".A", ".B"))]
    assert params
    for p in params:
        p.requires_grad_(True)
    x, target, mask = ex.tokens[:, :-1], ex.tokens[:, 1:], ex.answer_mask[:, 1:]
    want = F.cross_entropy(model(x)[mask], target[mask])
    want_grads = torch.autograd.grad(want, params)
    got = answer_loss(model, ex)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(torch.autograd.grad(got, params), want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        by_hand = ((model(x).argmax(-1) == target) | ~mask).all(1)
    assert torch.equal(exact_match_rows(model, ex), by_hand)
    assert 0 < int(by_hand.sum()) < len(ex)
