"""The one-layer recall model (theory/recall.py): exact storage, key regimes, readouts."""
import math

import pytest
import torch

from theory.key_geometry import fresh_unit_cosine, relu_key_cosine
from theory.recall import (KEY_REGIMES, READOUTS, RELATION_CENTRED, RecallConfig, build_recall_model, margin, one_hot,
                           rank_one_edit)

TINY = dict(d_model=16, d_mlp=64, n_entities=16, n_relations=3)


def _model(keys="centred", seed=0, batch=None, **kw):
    return build_recall_model(RecallConfig(**{**TINY, **kw}, keys=keys), torch.Generator().manual_seed(seed), batch)


@pytest.mark.parametrize("keys", (*KEY_REGIMES, RELATION_CENTRED))
@pytest.mark.parametrize("n_facts", [pytest.param(None, id="N=all"), pytest.param(20, id="N=20")])
def test_P1_model_stores_every_fact_exactly(keys, n_facts):
    """PAPER.md s.1: "Exact storage of many facts is constructible when keys are linearly
    independent": W key(x, r) = i_{r(x)} for all N stored facts."""
    model = _model(keys, n_facts=n_facts)
    assert model.storage_error < 1e-9
    logits = model.logits(model.stored_keys)  # (|E|, N)
    assert torch.equal(logits.argmax(0), model.answers)
    assert torch.allclose(margin(logits.T, model.answers), torch.ones(model.config.N, dtype=torch.float64))
    # two-sided: the same W does not "store" a different answer table
    wrong = (model.answers + 1) % model.config.n_entities
    assert (logits - one_hot(wrong, model.config.n_entities).T).abs().max() > 0.5


def test_batch_is_a_stack_of_independent_models():
    """A batched build holds n models; each instance answers like a single model."""
    batch = _model(batch=3)
    assert batch.batch == 3 and batch.storage_error < 1e-9
    x, r = torch.tensor([0, 5, 7]), torch.tensor([1, 0, 2])
    keys = batch.key(x, r)  # (3, m)
    for i in range(3):
        single = batch.instance(i)
        assert torch.allclose(single.key(int(x[i]), int(r[i])), keys[i])
        assert int(single.answer(int(x[i]), int(r[i]))) == int(batch.answer(x, r)[i])
    assert not torch.allclose(batch.W[0], batch.W[1])  # independent draws


def test_builder_is_deterministic_in_its_generator():
    a, b, c = _model(seed=3), _model(seed=3), _model(seed=4)
    assert torch.equal(a.W, b.W) and torch.equal(a.facts, b.facts)
    assert not torch.allclose(a.E, c.E)


def test_two_hop_key_is_the_documented_readout():
    """recall.py: the two-hop prompt "X R1 R2" is read as h = V e_X + e_R1 + e_R2."""
    m = _model()
    h = m.V @ m.E[3] + m.R[0] + m.R[2]
    assert torch.allclose(m.key(3, 0, 2), torch.relu(m.U @ h) - m.mu)
    assert torch.allclose(m.hidden(3, 0, 2), h)
    assert not torch.allclose(m.key(3, 0, 2), m.key(3, 0))  # r2 matters


def test_random_maps_readout_is_the_documented_readout():
    """recall.py, readout random_maps: one-hop "X R" is h = V e_X + M_2 e_R, two-hop "X R1 R2"
    is h = V e_X + M_1 e_R1 + M_2 e_R2, with independent Gaussian maps (batched too)."""
    m = _model(readout="random_maps")
    M1, M2 = m.M
    assert torch.allclose(m.hidden(3, 0, 2), m.V @ m.E[3] + M1 @ m.R[0] + M2 @ m.R[2])
    assert torch.allclose(m.hidden(3, 1), m.V @ m.E[3] + M2 @ m.R[1])
    assert torch.allclose(m.relation_part(3, 0, 2), M1 @ m.R[0] + M2 @ m.R[2])
    assert torch.allclose(m.key(3, 0, 2), torch.relu(m.U @ m.hidden(3, 0, 2)) - m.mu)
    assert not torch.allclose(M1, M2) and not torch.allclose(M1, m.V)
    assert m.M[0].std() == pytest.approx(1 / math.sqrt(m.config.d_model), rel=0.1)  # N(0, 1/d) entries
    b = _model(readout="random_maps", batch=2)
    x, r1, r2 = torch.tensor([3, 4]), torch.tensor([0, 1]), torch.tensor([2, 0])
    for i in range(2):
        assert torch.allclose(b.hidden(x, r1, r2)[i], b.instance(i).hidden(int(x[i]), int(r1[i]), int(r2[i])))


def test_additive_two_hop_key_contains_the_first_hop_input_random_maps_do_not():
    """recall.py: with the additive readout h(x r1 r2) - h(x r1) = e_r2 exactly (adapter 1's key
    input is inside the two-hop key); with random maps the two share only the subject part."""
    add, rnd = _model(), _model(readout="random_maps")
    assert torch.allclose(add.hidden(3, 0, 2) - add.hidden(3, 0), add.R[2], atol=1e-14)
    assert torch.equal(add.M, torch.eye(add.config.d_model, dtype=torch.float64).expand(2, -1, -1))
    diff = rnd.hidden(3, 0, 2) - rnd.hidden(3, 0)  # = M_1 e_r0 + M_2 (e_r2 - e_r0)
    assert (diff - rnd.M[1] @ rnd.R[2]).norm() > 0.3
    assert torch.allclose(diff, rnd.M[0] @ rnd.R[0] + rnd.M[1] @ (rnd.R[2] - rnd.R[0]))


@pytest.mark.parametrize("keys", (*KEY_REGIMES, RELATION_CENTRED))
def test_random_maps_models_store_every_fact_exactly(keys):
    m = _model(keys, readout="random_maps")
    assert m.storage_error < 1e-9


def test_raw_keys_are_nonnegative_with_a_large_common_component():
    """recall.py: raw keys are non-negative, so two keys share a large common component."""
    K = _model("raw").stored_keys
    Kn = K / K.norm(dim=0)
    cos = Kn.T @ Kn
    off = cos[~torch.eye(cos.shape[0], dtype=torch.bool)]
    assert K.min() >= 0 and off.min() > 0 and off.mean() > 0.25


def test_centred_offset_is_the_prior_mean_key():
    """recall.py: mu = E[ReLU(U h)] under e ~ N(0, I/d), in closed form (checked by Monte Carlo)."""
    m, g = _model("centred"), torch.Generator().manual_seed(1)
    d, n = m.config.d_model, 40_000
    e_x = torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    e_r = torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    mc = torch.relu((e_x @ m.V.T + e_r) @ m.U.T).mean(0)  # (m,)
    assert (mc - m.mu).abs().max() < 0.05 * m.mu.mean()
    assert _model("raw").mu.abs().max() == 0
    # random maps: the one-hop relation part is M_2 e_r, so the offset changes with M_2 (two-sided)
    rm = _model("centred", readout="random_maps")
    mc = torch.relu((e_x @ rm.V.T + e_r @ rm.M[1].T) @ rm.U.T).mean(0)
    assert (mc - rm.mu).abs().max() < 0.05 * rm.mu.mean()
    wrong = torch.relu((e_x @ rm.V.T + e_r) @ rm.U.T).mean(0)  # as if M_2 = I
    assert (wrong - rm.mu).abs().max() > 4 * (mc - rm.mu).abs().max()


def _subject_draws(m, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, m.config.d_model, generator=g, dtype=torch.float64) / math.sqrt(m.config.d_model)


@pytest.mark.parametrize("rels", [pytest.param((1,), id="one-hop"), pytest.param((0, 2), id="two-hop")])
def test_relation_offset_is_the_mean_key_over_subjects(rels):
    """recall.py, regime relation: mu = E_e[ReLU(U (V e + sum_r e_r))] in closed form (checked
    by Monte Carlo over subject embeddings), so relation-centred keys have mean 0 over the
    subject; the global offset does not centre them (two-sided)."""
    m = _model(RELATION_CENTRED)
    e, rel = _subject_draws(m, 40_000, 2), sum(m.R[r] for r in rels)
    mc = torch.relu((e @ m.V.T + rel) @ m.U.T).mean(0)  # (m,)
    closed = m.relation_mean(rel[None, None, :])[0, 0]  # (m,)
    assert (mc - closed).abs().max() < 0.03 * closed.abs().mean()
    glob = _model("centred")  # same seed: same E, R, V, U; one fixed offset for every prompt
    assert (glob.mu - closed).abs().max() > 10 * (mc - closed).abs().max()


def test_relation_centred_keys_of_independent_subjects_have_zero_mean_overlap():
    """recall.py: "the keys of two prompts with independent subjects have E<v2, v'> = 0
    exactly" (relation regime), while the globally centred keys of prompts sharing r2 overlap."""
    means = {}
    for keys in ("centred", RELATION_CENTRED):
        m = _model(keys)
        e, e2 = _subject_draws(m, 4000, 3), _subject_draws(m, 4000, 4)
        vp = torch.relu((e @ m.V.T + m.R[0] + m.R[1]) @ m.U.T)  # two-hop "x r0 r1", rows (n, m)
        v2 = torch.relu((e2 @ m.V.T + m.R[1]) @ m.U.T)  # one-hop "y r1"
        if keys == "centred":
            vp, v2 = vp - m.mu, v2 - m.mu
        else:
            vp = vp - m.relation_mean((m.R[0] + m.R[1])[None, None, :])[0]
            v2 = v2 - m.relation_mean(m.R[1][None, None, :])[0]
        cos = (vp * v2).sum(1) / (vp.norm(dim=1) * v2.norm(dim=1))
        means[keys] = (float(cos.mean()), float(cos.std() / math.sqrt(cos.numel())))
    assert abs(means[RELATION_CENTRED][0]) < 4 * means[RELATION_CENTRED][1]
    assert means["centred"][0] > 0.2


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("keys", ["raw", "centred"])
def test_fresh_unit_cosine_is_the_key_cosine_of_an_independent_U(keys, readout):
    """fresh_unit_cosine: cosine of the same key map with fresh units; for raw keys and many
    units it approaches the arc-cosine kernel (independent oracle); the fresh U differs."""
    m = _model(keys, batch=3, d_mlp=4096, readout=readout)
    h, h2 = m.hidden(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])), m.hidden(torch.tensor([3, 4, 5]),
                                                                                torch.tensor([1, 1, 1]))
    pred = fresh_unit_cosine(m, h, h2, torch.Generator().manual_seed(7))
    own = (m.key(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])) * m.key(torch.tensor([3, 4, 5]),
           torch.tensor([1, 1, 1]))).sum(-1)
    own = own / (m.key(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])).norm(dim=-1)
                 * m.key(torch.tensor([3, 4, 5]), torch.tensor([1, 1, 1])).norm(dim=-1))
    assert (pred - own).abs().max() < 0.05 and (pred - own).abs().max() > 0  # same law, different units
    if keys == "raw":
        kernel = relu_key_cosine((h * h2).sum(-1) / (h.norm(dim=-1) * h2.norm(dim=-1)))
        assert (pred - kernel).abs().max() < 0.03


def test_fresh_unit_cosine_needs_relation_parts():
    m = _model(RELATION_CENTRED, batch=2)
    h = m.hidden(torch.tensor([0, 1]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="rel, rel2"):
        fresh_unit_cosine(m, h, h, torch.Generator())


@pytest.mark.parametrize("cos_h,expected", [(0.0, 1 / math.pi), (1.0, 1.0), (-1.0, 0.0)])
def test_relu_key_cosine_endpoints(cos_h, expected):
    assert float(relu_key_cosine(torch.tensor(cos_h, dtype=torch.float64))) == pytest.approx(expected, abs=1e-12)


def test_relu_key_cosine_matches_wide_random_features():
    """Arc-cosine kernel: cos(ReLU(U h), ReLU(U h')) -> (sin t + (pi - t) cos t)/pi as m grows."""
    g = torch.Generator().manual_seed(0)
    U = torch.randn(100_000, 2, generator=g, dtype=torch.float64)
    for t in (0.3, 1.2, 2.5):
        h = torch.tensor([1.0, 0.0], dtype=torch.float64)
        hp = torch.tensor([math.cos(t), math.sin(t)], dtype=torch.float64)
        k, kp = torch.relu(U @ h), torch.relu(U @ hp)
        measured = float(k @ kp / (k.norm() * kp.norm()))
        assert measured == pytest.approx(float(relu_key_cosine(torch.tensor(math.cos(t)))), abs=0.01)


def test_margin_values():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]])
    assert float(margin(logits[0], 1)) == 1.0
    assert float(margin(logits[0], 0)) == -2.0
    assert margin(logits, torch.tensor([2, 2])).tolist() == [-1.0, 5.0]


@pytest.mark.parametrize("kw,field", [
    pytest.param(dict(d_model=0), "d_model", id="d_model=0"),
    pytest.param(dict(d_mlp=2.5), "d_mlp", id="d_mlp=2.5"),
    pytest.param(dict(n_entities=3), "n_entities", id="n_entities=3"),
    pytest.param(dict(n_facts=1000), "n_facts", id="n_facts>pairs"),
    pytest.param(dict(d_mlp=40), "n_facts", id="N>m"),
    pytest.param(dict(keys="whitened"), "keys", id="keys=whitened"),
    pytest.param(dict(readout="concat"), "readout", id="readout=concat"),
])
def test_config_rejects_bad_values(kw, field):
    with pytest.raises(ValueError, match=field) as err:
        RecallConfig(**{**TINY, **kw})
    assert str(list(kw.values())[0]) in str(err.value) or field == "n_facts"


def test_bad_calls_raise():
    m = _model()
    with pytest.raises(ValueError, match="new=.*must be entity indices in \\[0, 16\\)"):
        rank_one_edit(m, m.key(0, 0), 16)
    with pytest.raises(ValueError, match="relations"):
        m.key(0)
    with pytest.raises(ValueError, match="relations: 3 given"):
        m.key(0, 0, 1, 2)
    with pytest.raises(ValueError, match="batch=0"):
        build_recall_model(RecallConfig(**TINY), torch.Generator(), batch=0)
