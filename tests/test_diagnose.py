"""`lora-limits diagnose`: the T2 readiness coefficient against P1's closed form and a dense
oracle, planted keys read both ways (own bridge, broadcast, other bridge), the keys read off
a HF model, and the one-line errors of the verb."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.cli import main
from analysis.diagnose_adapters import (PAIRS_FILE, coefficients, prompt_keys, read_pairs, readiness,
                                        subspace_share, with_adapters)
from analysis.errors import UsageError
from analysis.inspect_adapters import PeftAdapter
from theory.merge import Factors
from toymodels.tasks.natural import NaturalConfig, make_chains
from toymodels.tasks.natural_probes import readiness_prompts

D_IN, D_OUT = 12, 9


def test_coefficient_is_p1s_overlap_for_a_rank_one_edit_and_matches_a_dense_oracle():
    """For ``delta = d v2^T / ||v2||^2`` (P1) the coefficient on key k is <v2, k>/||v2||^2,
    whatever d; 1 on the expert's own key; and at rank 3 the dense formula."""
    gen = torch.Generator().manual_seed(0)
    v2, d = torch.randn(D_IN, generator=gen, dtype=torch.float64), torch.randn(D_OUT, generator=gen, dtype=torch.float64)
    p1 = Factors(A=(v2 / v2.dot(v2))[None, :], B=d[:, None], scale=1.0)
    keys = torch.randn(5, D_IN, generator=gen, dtype=torch.float64)
    coef = coefficients(p1, keys, v2[None, :])  # (5, 1)
    torch.testing.assert_close(coef[:, 0], keys @ v2 / v2.dot(v2))
    torch.testing.assert_close(coefficients(p1, v2[None, :], v2[None, :]), torch.ones(1, 1, dtype=torch.float64))
    f = Factors(A=torch.randn(3, D_IN, generator=gen), B=torch.randn(D_OUT, 3, generator=gen), scale=0.5)
    experts = torch.randn(4, D_IN, generator=gen, dtype=torch.float64)
    delta = f.delta.double()
    dense = torch.stack([torch.stack([(delta @ k).dot(delta @ e) / (delta @ e).square().sum() for e in experts])
                         for k in keys])
    torch.testing.assert_close(coefficients(f, keys, experts), dense)


def test_coefficient_is_nan_where_the_expert_prompt_gets_no_edit():
    A = torch.zeros(1, D_IN)
    A[0, 0] = 1.0
    f = Factors(A=A, B=torch.ones(D_OUT, 1), scale=1.0)
    e = torch.zeros(1, D_IN, dtype=torch.float64)
    e[0, 1] = 1.0  # orthogonal to A's row: delta e = 0
    assert torch.isnan(coefficients(f, torch.ones(2, D_IN, dtype=torch.float64), e)).all()


def test_subspace_share_inside_outside_and_partial():
    A = torch.zeros(2, D_IN)
    A[0, 0], A[1, 1] = 1.0, 3.0
    f = Factors(A=A, B=torch.randn(D_OUT, 2, generator=torch.Generator().manual_seed(1)), scale=1.0)
    keys = torch.zeros(3, D_IN, dtype=torch.float64)
    keys[0, :2] = torch.tensor([2.0, -1.0])  # inside
    keys[1, 5] = 4.0  # outside
    keys[2, 0], keys[2, 7] = 1.0, 1.0  # half its energy inside
    torch.testing.assert_close(subspace_share(f, keys), torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64))


# --- planted keys: readiness read both ways ---------------------------------------------------

N_BRIDGES, PER_BRIDGE = 4, 3
PATHS = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def planted(composed_from: str, noise: float = 0.05, seed: int = 0):
    """An adapter whose delta maps the 4 expert keys (orthonormal) to independent outputs, and
    pairs whose composed keys are their own bridge's key, the mean of all bridges' keys
    (broadcast), or the next bridge's key; plus noise."""
    gen = torch.Generator().manual_seed(seed)
    experts = torch.linalg.qr(torch.randn(D_IN, N_BRIDGES, generator=gen, dtype=torch.float64))[0].T  # (4, D_IN)
    own = torch.arange(N_BRIDGES).repeat_interleave(PER_BRIDGE)  # (12,)
    source = {"own": experts[own], "broadcast": experts.mean(0).expand(len(own), -1),
              "other": experts[(own + 1) % N_BRIDGES]}[composed_from]
    keys = source + noise * torch.randn(len(own), D_IN, generator=gen, dtype=torch.float64)
    factors = {p: Factors(A=experts.float(), B=torch.randn(D_OUT, N_BRIDGES, generator=gen), scale=1.0) for p in PATHS}
    adapter = PeftAdapter("BC", Path("BC"), {}, factors)
    pairs = [{"group": "F/capital", "prompt": f"q{i}", "expert_prompt": f"B{int(b)}"} for i, b in enumerate(own)]
    return adapter, {p: keys for p in PATHS}, {p: experts for p in PATHS}, pairs


def test_readiness_is_positive_when_each_question_reaches_its_own_bridge():
    report = readiness(*planted("own"))
    g = report["groups"]["F/capital"]
    assert g["pairs"] == 12 and g["bridges"] == 4 and report["modules"] == 2
    assert g["paired"] == pytest.approx(1.0, abs=0.2) and abs(g["unpaired"]) < 0.2
    assert g["gap"]["low"] > 0.5
    # the positive control: composed keys equal to their bridge's expert key (up to noise) get its gap
    assert g["expert_gap"] == pytest.approx(g["gap"]["mean"], rel=0.2) and g["relative"] == pytest.approx(1.0, abs=0.2)
    assert g["control_passes"] and g["expert_gap_ci"]["low"] > 0 and g["expert_gap_ci"]["n"] == N_BRIDGES
    assert g["share_expert"] == pytest.approx(1.0) and g["share_chance"] == pytest.approx(N_BRIDGES / D_IN)
    assert [row["layer"] for row in report["layers"]["F/capital"]] == [0, 1]


def test_readiness_is_zero_for_a_broadcast_and_negative_for_the_wrong_bridge():
    g = readiness(*planted("broadcast"))["groups"]["F/capital"]
    assert g["paired"] == pytest.approx(g["unpaired"], abs=0.1) and g["gap"]["low"] < 0 < g["gap"]["high"]
    assert abs(g["relative"]) < 0.1 and g["expert_gap"] > 0.5  # the expert keys themselves are told apart
    g = readiness(*planted("other"))["groups"]["F/capital"]
    assert g["gap"]["high"] < -0.1  # reaches a bridge that is not its own: mean over the 3 others ~1/3
    assert g["relative"] == pytest.approx(g["gap"]["mean"] / g["expert_gap"]) and abs(g["expert_gap"] - 1) > 0.05


def test_a_group_with_one_bridge_has_no_control():
    adapter, keys, experts, pairs = planted("own")
    pairs = [dict(p, group=f"g{p['expert_prompt']}") for p in pairs]  # each bridge alone in its group
    report = readiness(adapter, keys, experts, pairs)
    assert all(g["gap"] is None and np.isnan(g["unpaired"]) and np.isnan(g["expert_gap"]) and np.isnan(g["relative"])
               and not g["control_passes"] for g in report["groups"].values())


def test_protocol_pairs_pair_each_two_hop_question_with_its_bridge():
    chains = make_chains(NaturalConfig(n_countries=2, cities_per_country=2), np.random.default_rng(0))
    file = readiness_prompts(chains)
    pairs = file["pairs"]
    assert file["adapter"] == "BC" and len(pairs) == len(chains)
    assert file["controls"] == list(dict.fromkeys(c.hop1()[0] for c in chains))  # hop 1: BC should not act
    for c, p in zip(chains, pairs):
        assert p["group"] == f"{c.familiarity}/{c.relation}" and c.city in p["prompt"] and c.country in p["expert_prompt"]
        assert p["prompt"] == c.two_hop()[0] and p["expert_prompt"] == c.hop2()[0]
    assert {p["group"].split("/")[0] for p in pairs} == {"F", "H", "R"}


# --- keys read off a HF model -------------------------------------------------------------------

transformers = pytest.importorskip("transformers")

from tests.bad_input_builders import word_tokenizer_folder, write_adapter  # noqa: E402
from toymodels.pretrained import tiny_llama  # noqa: E402


class WordTokenizer:
    """Whitespace words -> ids (unknown: 0)."""

    def __init__(self, words):
        self.ids = {w: i + 1 for i, w in enumerate(words)}

    def encode(self, text, add_special_tokens=False):
        return [self.ids.get(w, 0) for w in text.split()]


def test_keys_are_the_module_input_at_each_prompts_last_token_whatever_the_padding():
    model = tiny_llama(torch.Generator().manual_seed(0))
    tok = WordTokenizer([f"w{i}" for i in range(20)])
    prompts = ["w1 w2 w3 w4 w5", "w6", "w7 w8"]
    path = "model.layers.1.mlp.down_proj"
    keys = prompt_keys(model, tok, prompts, [path])[path]
    for i, text in enumerate(prompts):  # one prompt at a time, no padding, read by our own hook
        seen = []
        hook = model.get_submodule(path).register_forward_hook(lambda m, a, o: seen.append(a[0]))
        with torch.no_grad():
            model(input_ids=torch.tensor([tok.encode(text)]))
        hook.remove()
        torch.testing.assert_close(keys[i], seen[0][0, -1].double(), rtol=1e-5, atol=1e-6)


def test_keys_with_an_adapter_read_the_merged_model_and_leave_the_base_alone(tmp_path):
    from analysis.inspect_adapters import read_adapter

    model = tiny_llama(torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = read_adapter(write_adapter(tmp_path / "AB"))
    merged = with_adapters(model, [adapter])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    path = next(iter(adapter.factors))
    torch.testing.assert_close(merged.get_submodule(path).weight, before[f"{path}.weight"] + adapter.factors[path].delta)


# --- the verb -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "llama"
    tiny_llama(torch.Generator().manual_seed(0)).save_pretrained(folder)
    word_tokenizer_folder(folder)  # words "a", "b"
    return folder


def experts_folder(root: Path) -> Path:
    """A folder as pretrained_two_hop saves it: AB, BC, AC and prompt_pairs.json naming BC."""
    for name in ("AB", "BC", "AC"):
        write_adapter(root / name)
    pairs = [{"group": "F/capital", "prompt": "a b a", "expert_prompt": "b"},
             {"group": "F/capital", "prompt": "b b a", "expert_prompt": "a"},
             {"group": "F/capital", "prompt": "a a b", "expert_prompt": "a b"}]
    (root / PAIRS_FILE).write_text(json.dumps({"adapter": "BC", "pairs": pairs, "controls": ["b b", "a"]}))
    return root


def test_cli_on_a_protocol_folder_prints_table_baselines_and_figure(tmp_path, model_folder, capsys):
    root = experts_folder(tmp_path / "key")
    out = tmp_path / "fig"
    assert main(["diagnose", str(root), "--base", str(model_folder), "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "readiness of" in text and "F/capital" in text and "BC|AB" in text and "BC|AC" in text
    assert "not yet validated" in text and (out / "diagnose_readiness.png").stat().st_size > 0
    sidecar = json.loads((out / "diagnose_readiness.json").read_text())
    report = sidecar["data"]["report"]
    assert report["groups"]["F/capital"]["pairs"] == 3 and report["groups"]["F/capital"]["bridges"] == 3
    assert report["controls"] == 2 and 0 <= report["share_control"] <= 1 and "control prompts (2" in text
    assert set(report["baselines"]) == {"BC|AB", "BC|AC"}  # the same seeded factors: cosine 1
    assert all(b["cosine"] == pytest.approx(1.0, abs=1e-5) for b in report["baselines"].values())
    # the expert's own folder finds the pairs in its parent; --json prints the same numbers
    assert main(["diagnose", str(root / "BC"), "--base", str(model_folder), "--device", "cpu", "--json",
                 "--no-figures"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["groups"] == report["groups"]


@pytest.mark.parametrize("case,why", [
    ("no_pairs", "give the prompt pairs with --pairs FILE"),
    ("not_json", "not JSON"),
    ("no_field", "pair 0 needs non-empty strings"),
    ("missing_adapter", "names adapter 'XY'"),
    ("no_folder", "no such folder"),
])
def test_errors_are_one_line(tmp_path, model_folder, capsys, case, why):
    root = experts_folder(tmp_path / "key")
    target = root
    if case == "no_pairs":
        (root / PAIRS_FILE).unlink()
    elif case == "not_json":
        (root / PAIRS_FILE).write_text("{oops")
    elif case == "no_field":
        (root / PAIRS_FILE).write_text(json.dumps({"adapter": "BC", "pairs": [{"group": "g", "prompt": "a"}]}))
    elif case == "missing_adapter":
        (root / PAIRS_FILE).write_text(json.dumps({"adapter": "XY", "pairs": [
            {"group": "g", "prompt": "a", "expert_prompt": "b"}]}))
    else:
        target = tmp_path / "nowhere"
    assert main(["diagnose", str(target), "--base", str(model_folder), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and why in err and "Traceback" not in err


def test_read_pairs_accepts_a_bare_list(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"group": "g", "prompt": "a", "expert_prompt": "b"}]))
    read = read_pairs(path)
    assert (read.adapter, read.pairs, read.controls) == (None, [{"group": "g", "prompt": "a", "expert_prompt": "b"}], [])
    path.write_text(json.dumps({"pairs": read.pairs, "controls": ["a", ""]}))
    with pytest.raises(UsageError, match="controls"):
        read_pairs(path)
    path.write_text(json.dumps({"pairs": []}))
    with pytest.raises(UsageError, match="no pairs"):
        read_pairs(path)


def test_share_of_the_control_prompts_against_a_hand_projection(tmp_path):
    """``share_control``: the control prompts' key energy in span(A rows), averaged over the
    adapter's modules and the prompts, recomputed here with our own hooks and a QR basis."""
    from analysis.diagnose_adapters import PromptPairs, diagnose
    from analysis.inspect_adapters import read_adapter

    model = tiny_llama(torch.Generator().manual_seed(0))
    tok = WordTokenizer([f"w{i}" for i in range(20)])
    adapter = read_adapter(write_adapter(tmp_path / "BC"))
    controls = ["w3 w4", "w5 w6 w7", "w9"]
    pairs = [{"group": "g", "prompt": "w1 w2", "expert_prompt": "w2"}, {"group": "g", "prompt": "w8", "expert_prompt": "w3"}]
    bars = []

    class Recorder:  # the progress interface (toymodels/progress.py): one bar over every prompt read
        def __init__(self, desc, total):
            self.desc, self.total, self.done, self.closed = desc, total, 0, False
            bars.append(self)

        def update(self, n=1):
            self.done += n

        def set_postfix_str(self, s="", refresh=True):
            pass

        def close(self):
            self.closed = True

    report = diagnose(model, tok, adapter, PromptPairs("BC", pairs, controls), progress=Recorder)
    assert [(b.total, b.done, b.closed) for b in bars] == [(2 + 2 + 3, 7, True)]
    shares = []
    for path, f in adapter.factors.items():
        Q = torch.linalg.qr(f.A.double().T)[0]  # (d_in, r): A has full row rank here
        for text in controls:
            seen = []
            hook = model.get_submodule(path).register_forward_hook(lambda m, a, o: seen.append(a[0]))
            with torch.no_grad():
                model(input_ids=torch.tensor([tok.encode(text)]))
            hook.remove()
            k = seen[0][0, -1].double()
            shares.append(float((Q.T @ k).square().sum() / k.square().sum()))
    assert report["controls"] == 3 and report["share_control"] == pytest.approx(np.mean(shares), rel=1e-6)


def test_the_gap_is_not_read_where_the_expert_prompts_are_not_told_apart():
    """Positive control failing: every bridge's edit writes the same output (B has one column
    repeated), so coef(e_i, e_j) = 1 for all i, j: expert gap 0, relative NaN, control fails."""
    adapter, keys, experts, pairs = planted("own")
    same = {p: Factors(A=f.A, B=f.B[:, :1].repeat(1, N_BRIDGES), scale=f.scale) for p, f in adapter.factors.items()}
    g = readiness(PeftAdapter("BC", Path("BC"), {}, same), keys, experts, pairs)["groups"]["F/capital"]
    assert g["expert_gap"] == pytest.approx(0.0, abs=1e-9) and not g["control_passes"] and np.isnan(g["relative"])
