"""toymodels/span_family.py against hand-derived answers: a bigram "model" whose next token is a
fixed table of logits, so every greedy decoding is known by hand and every log-probability is
an independent numpy sum over the table."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from toymodels.reuse_options import ReuseOptions
from toymodels.span_family import (conditional, open_answers, rows, score_span_model, span_family, span_oracle,
                                   specificity)
from toymodels.tasks.family import SpanControl, SpanExpertSet
from toymodels.tasks.knowledge import encode

V, SEP, BOS, EOS = 12, 10, 1, 2
# greedy next token after each token (the bigram's argmax); see the rows below
NEXT = {3: 4, 4: 10, 10: 5, 5: 2, 6: 8, 8: 9, 9: 7, 7: 10, 11: 4, 1: 3, 2: 2, 0: 0}
ROWS = [([BOS, 3], [4, 10, 5, 2]),  # model writes 4 10 5 EOS: right, chain right
        ([BOS, 6], [7, 10, 5, 2]),  # model writes 8 9 7 10 5 EOS: final 5 right, 2 tokens past gold length
        ([BOS, 11], [4, 10, 8, 2])]  # model writes 4 10 5 EOS: final 5, gold 8: wrong


class Bigram(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        logits = torch.randn(V, V, generator=torch.Generator().manual_seed(seed))
        for a, b in NEXT.items():
            logits[a, b] = 6.0  # the argmax by a wide margin
        self.table = nn.Parameter(logits)

    def forward(self, tokens):  # (B, T) -> (B, T, V)
        return self.table[tokens]


def logprob(model: Bigram, question, answer) -> float:
    """Independent: sum of log-softmax table entries along the row."""
    table = model.table.detach().numpy().astype(np.float64)
    logp = table - np.log(np.exp(table).sum(1, keepdims=True))
    seq = question + answer
    return float(sum(logp[seq[t - 1], seq[t]] for t in range(len(question), len(seq))))


def expert_set(probes=None) -> SpanExpertSet:
    composed = encode(ROWS)
    facts = encode([([BOS, 8], [9, 7, 10, 5, 2]), ([BOS, 5], [2])])  # the model answers both
    control = SpanControl(encode([([BOS, 11], [4, 10, 8, 2]), ([BOS, 6], [7, 10, 8, 2])]),
                          (frozenset({(5,)}), frozenset({(9,)})), SEP)
    return SpanExpertSet(train={"f": facts, "composed": composed}, facts_eval={"f": facts, "composed": composed},
                         composed=composed, controls={"composed": control, "f": control},
                         retention={"own": encode([([BOS, 8], [9, 2]), ([BOS, 9], [7, 10, 5, 2])])},
                         probes=probes or {"p": encode([([BOS, 3], [4, 10, 5, 2]), ([BOS, 9], [3, 2])])})


def test_rows_invert_encode_and_open_answers_extends_to_the_end():
    ex = encode(ROWS)
    assert rows(ex) == ROWS
    wide = open_answers(ex, 3)
    assert wide.tokens.shape == (3, ex.tokens.shape[1] + 3)
    assert wide.answer_mask[:, :2].sum() == 0 and wide.answer_mask[:, 2:].all()


def test_scores_match_the_hand_derived_decodings_and_numpy_logprobs():
    model, es = Bigram(), expert_set()
    needs = [[("p", 0)], [("p", 1)], [("p", 0)]]  # probe row 1 (9 -> 3) is wrong: question 1 excluded
    s = score_span_model(model, es, ["f", "composed"], SEP, needs, extra=4)
    assert s["composed"] == pytest.approx(2 / 3)
    assert s["composed_chain"] == pytest.approx(1 / 3)
    assert s["composed_logprob"] == pytest.approx(np.mean([logprob(model, q, a) for q, a in ROWS]), abs=1e-5)
    assert s["conditional"] == {"composed": 0.5, "n": 2}  # rows 0 (right) and 2 (wrong)
    assert s["facts"] == {"f": 1.0, "composed": pytest.approx(1 / 3)}  # teacher-forced whole answers
    assert s["retention"] == {"own": 0.5} and s["probes"] == {"p": 0.5}
    # control row 0: model writes final 5, a new answer; row 1: writes 5, not 9
    assert s["broadcast"] == {"f": 0.5, "composed": 0.5}
    # without room past the gold length, row 1's decoding has no EOS: counted wrong
    assert score_span_model(model, es, ["f"], SEP, needs, extra=0)["composed"] == pytest.approx(1 / 3)
    # no separator: the final span is the whole answer (row 1 writes a longer one), no chain metric
    direct = score_span_model(model, es, ["f"], None, needs, extra=4)
    assert "composed_chain" not in direct and direct["composed"] == pytest.approx(1 / 3)  # row 0 only


def test_specificity_is_the_independent_mean_of_right_and_wrong_probabilities():
    model, ex = Bigram(1), encode(ROWS)
    s = specificity(model, ex)
    right = [math.exp(logprob(model, q, a)) for q, a in ROWS]
    wrong = [np.mean([math.exp(logprob(model, ROWS[i][0], ROWS[j][1])) for j in range(3) if j != i])
             for i in range(3)]
    assert s["right"] == pytest.approx(np.mean(right), rel=1e-4)
    assert s["wrong"] == pytest.approx(np.mean(wrong), rel=1e-4)
    assert s["margin"] == pytest.approx(s["right"] - s["wrong"], abs=1e-9)


def test_specificity_sign_follows_which_answer_the_model_prefers():
    """A model that gives every prompt question 0's answer (broadcast) has a negative margin;
    the one that answers each prompt its own answer a positive one."""
    ex = encode([([BOS, 3], [4, 2]), ([BOS, 6], [7, 2]), ([BOS, 11], [8, 2])])
    own = Bigram()
    with torch.no_grad():
        own.table[3, 4] = own.table[6, 7] = own.table[11, 8] = 9.0
        own.table[4, 2] = own.table[7, 2] = own.table[8, 2] = 9.0
    assert specificity(own, ex)["margin"] > 0.5
    broad = Bigram()
    with torch.no_grad():
        broad.table[[3, 6, 11], 4] = 9.0  # every prompt -> question 0's answer
        broad.table[[3, 6, 11], 7] = -9.0
        broad.table[[3, 6, 11], 8] = -9.0
        broad.table[3, 4] = -9.0
        broad.table[3, 7] = 9.0  # ...except question 0 itself, which gets question 1's
        broad.table[[4, 7, 8], 2] = 9.0
    assert specificity(broad, ex)["margin"] < -0.3


def test_specificity_skips_other_questions_with_the_same_answer():
    ex = encode([([BOS, 3], [4, 2]), ([BOS, 6], [4, 2])])
    s = specificity(Bigram(), ex)
    assert math.isnan(s["wrong"]) and math.isnan(s["margin"])


def test_conditional_with_no_qualifying_question_is_none_and_checks_lengths():
    ok = torch.tensor([True, False])
    probes = {"p": torch.tensor([False, False])}
    assert conditional(ok, [[("p", 0)], [("p", 1)]], probes) == {"composed": None, "n": 0}
    assert conditional(ok, [[], [("p", 1)]], probes) == {"composed": 1.0, "n": 1}
    with pytest.raises(ValueError, match="needs has 1 entries for 2"):
        conditional(ok, [[]], probes)


def test_family_checks_needs_and_oracle_takes_the_best_adapter():
    es = expert_set()
    with pytest.raises(ValueError, match="probe sets \\['nope'\\]"):
        span_family(es, {"lib": ["f"]}, ReuseOptions(), SEP, [[("nope", 0)]] * 3)
    fam = span_family(es, {"lib": ["f"]}, ReuseOptions(lorahub_shots=1), SEP, [[]] * 3, extra=4)
    assert len(fam.shots) == 1
    full, lorahub = fam.score(Bigram(), ["f"], "average"), fam.score(Bigram(), ["f"], "lorahub")
    assert full["composed_rows"] == 3 and lorahub["composed_rows"] == 2
    assert lorahub["composed"] == pytest.approx(0.5)  # rows 1 (right) and 2 (wrong)
    a = {"composed": 0.2, "facts": {"f": 0.9, "g": 0.1}, "broadcast": {"f": 0.3, "g": 0.4, "composed": 0.7}}
    b = {"composed": 0.6, "facts": {"f": 0.2, "g": 0.8}, "broadcast": {"f": 0.5, "g": 0.6, "composed": 0.1}}
    out = span_oracle([a, b], ["f", "g"])
    assert out["composed"] == 0.6 and out["composed_adapter"] == "g"
    assert out["facts"] == {"f": 0.9, "g": 0.8} and out["broadcast"] == {"f": 0.3, "g": 0.6, "composed": 0.1}
