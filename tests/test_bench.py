"""The `lora-limits bench` verb and the bench's measuring pieces (no timing assertions)."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from analysis.cli import main
from bench.measure import Row, peak_memory
from bench.toy_step import Reference, train_flops
from toymodels.model import GPT, ModelConfig
from conftest import TINY_GPT, seeded

KEYS = {"name", "value", "reference", "ratio", "target", "met"}


def test_bench_json_rows_have_the_schema_and_results_file_describes_the_machine(tmp_path, capsys):
    assert main(["bench", "--quick", "--only", "t2", "--json", "--out", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["t2_instances"]
    for r in rows:
        assert set(r) == KEYS
        assert r["value"] > 0 and r["reference"] > 0
        assert r["ratio"] == pytest.approx(r["value"] / r["reference"])
    files = list(tmp_path.glob("*+t2.json"))
    assert len(files) == 1, "a partial run must not take the full suite's file name"
    record = json.loads(files[0].read_text())
    assert {"cpu", "cores", "torch", "threads", "device", "loadavg_start", "loadavg_end"} <= set(record["machine"])
    assert record["benchmarks"] == ["t2"] and record["profile"] == "quick"
    assert [r["name"] for r in record["rows"]] == ["t2_instances"] and "unit" in record["rows"][0]


@pytest.mark.parametrize("argv,needle", [
    pytest.param(["--only", "nope"], "--only nope", id="unknown-benchmark"),
    pytest.param(["--threads", "0"], "--threads", id="threads-0"),
    pytest.param(["--threads", "x"], "--threads", id="threads-x"),
    pytest.param(["--tf32", "--device", "cpu", "--only", "t2"], "--tf32", id="tf32-on-cpu"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, needle):
    assert main(["bench", "--quick", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_cuda_without_a_gpu_is_a_usage_error(tmp_path, capsys):
    assert main(["bench", "--device", "cuda", "--only", "t2", "--out", str(tmp_path / "out")]) == 2
    assert "--device cuda" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_row_ratio_and_target():
    assert Row("a", 3.0, 2.0, "x", (">=", 1.3)).met is True
    assert Row("a", 2.0, 2.0, "x", (">=", 1.3)).met is False
    assert Row("a", 1e-7, 1.0, "x", ("<=", 1e-5)).met is True
    assert Row("a", 1e-4, 1.0, "x", ("<=", 1e-5)).met is False
    row = Row("a", 1.0, None, "x")
    assert row.ratio is None and row.met is None and set(row.as_json()) == KEYS
    assert Row("a", 3.0, 2.0, "x", (">=", 1.3)).as_json()["target"] == ">= 1.3"


def test_train_flops_equals_torch_flop_counter_on_our_gpt():
    """The MFU numerator, against an independent count (torch's FlopCounterMode over one
    forward + backward of the toy GPT: matmuls and attention products)."""
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, d_vocab=11, n_ctx=6)
    idx = torch.randint(11, (3, 6), generator=seeded(0))
    with FlopCounterMode(display=False) as counter:
        GPT(cfg, generator=seeded(1))(idx).sum().backward()
    assert counter.get_total_flops() == train_flops(cfg, 3 * 6)


def test_reference_has_the_toy_gpts_matrices():
    """The reference is the same shape: the same matrix parameters (its fused q/k/v
    in-projection is the three maps stacked) and the same logits shape."""
    ours, ref = GPT(TINY_GPT, generator=seeded(0)), Reference(TINY_GPT)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.ndim == 2)  # noqa: E731
    assert count(ours) == count(ref)
    idx = torch.randint(TINY_GPT.d_vocab, (2, TINY_GPT.n_ctx), generator=seeded(1))
    assert ref(idx).shape == ours(idx).shape


def test_cpu_peak_memory_sees_live_tensors_not_freed_ones():
    n = 1_000_000  # float32: 4 MB

    def one_at_a_time():
        for _ in range(3):
            torch.ones(n).sum()

    def three_alive():
        held = [torch.ones(n) for _ in range(3)]
        return sum(h.sum() for h in held)

    cpu = torch.device("cpu")
    assert 4 * n <= peak_memory(one_at_a_time, cpu) < 2 * 4 * n
    assert 3 * 4 * n <= peak_memory(three_alive, cpu) < 4 * 4 * n


def test_hf_comparison_trains_the_same_adapter_as_peft():
    pytest.importorskip("peft")
    from bench.hf_lora import compare
    from toymodels.pretrained import tiny_llama

    rows = compare(tiny_llama(seeded(0)), "tiny", (2, 8), torch.device("cpu"), repeats=1)
    assert [r.name for r in rows] == ["hf_lora_step_tiny", "hf_lora_peak_memory_tiny"]
    assert all(r.value > 0 and r.reference > 0 for r in rows)


# --- the time breakdown (bench --breakdown) ---

def test_phase_clock_gives_each_slice_between_protocol_events_its_phase(monkeypatch):
    """The event sequence of run_protocol (stacked training, then scoring, a sequential LoRA,
    a merge) on a fake clock: every slice lands in its phase, CPU like wall."""
    from bench import phases

    now = [0.0]
    monkeypatch.setattr(phases, "_now", lambda: (now[0], now[0] / 2))
    clock = phases.PhaseClock(("average",))

    def wait(s):
        now[0] += s

    wait(1)  # expert data and family: other
    title = clock(desc="split F", total=9)
    wait(3)  # the stacked engine trains every LoRA
    title.set_postfix_str("scoring base")
    wait(2)
    title.update()
    wait(0.5)  # between the update and the next LoRA's bar: other
    lora = clock(desc="LoRA AB train", total=10)
    wait(5)
    lora.update()
    lora.set_postfix_str("loss 0.1")  # a LoRA bar's postfix is not a protocol event
    wait(1)
    lora.close()
    title.update()
    title.set_postfix_str("scoring single/AB")
    wait(1)
    title.update()
    wait(4)  # building the merged model
    title.set_postfix_str("scoring average/hops")
    wait(2)
    title.update()
    title.close()
    clock.switch("other")
    t = clock.totals()
    assert t["wall_s"] == {"base_training": 0.0, "lora_training": 9.0, "merges": 4.0, "scoring": 5.0, "other": 1.5}
    assert t["cpu_s"] == {k: v / 2 for k, v in t["wall_s"].items()}
    assert t["total_wall_s"] == now[0]


def test_breakdown_runs_one_split_both_ways_and_the_outputs_agree():
    """A tiny config's F split, sequential and stacked: every phase is seen, and the two runs'
    scores agree (the same seeds)."""
    import dataclasses

    from bench.phases import PHASES, measure
    from toymodels.presets import tiny_two_hop

    cfg = dataclasses.replace(tiny_two_hop("cot"), familiarities=("F",), methods=("average", "ties"))
    live = measure(cfg, 0, "cpu")
    assert live["base_steps"] > 0 and live["base_training"]["wall_s"] > 0
    for mode in ("sequential", "stacked"):
        wall = live["modes"][mode]["wall_s"]
        assert set(wall) == set(PHASES) and wall["base_training"] == 0.0
        assert all(wall[p] > 0 for p in ("lora_training", "merges", "scoring")), wall
    agree = live["agreement"]
    assert agree["leaves"] > 100 and agree["unmatched_leaves"] == 0
    assert agree["max_abs_diff"] < 1e-4 and agree["lora_runs_with_other_steps"] == 0


def _store(root, experiment, config, seconds, start, result):
    from analysis.atomic import atomic_write_json
    from analysis.cache import config_json

    timing = {"seconds": seconds, "started_utc": f"2026-12-01T07:{start:02d}:00+00:00",
              "finished_utc": f"2026-12-01T07:{start + 1:02d}:00+00:00"}
    atomic_write_json(root / experiment / f"{config.key()}.json",
                      {"experiment": experiment, "key": config.key(), "config": config_json(config),
                       "result": result, "timing": timing, "versions": {}})


def test_breakdown_from_records_sums_time_bases_and_lora_runs_per_experiment(tmp_path):
    from analysis.atomic import atomic_write_json
    from analysis.experiments import mechanism, two_hop_reuse
    from bench.breakdown import from_records

    with pytest.raises(FileNotFoundError, match="no cached record"):
        from_records(tmp_path)
    a, b = [c for c in two_hop_reuse.grid("quick") if c.fmt == "latent" and c.seed == 0]  # main, shared: one base
    lora = {"steps": 5, "reached_target": True}
    result = {"base": {"steps": 300, "reached_target": False},
              "splits": {"F": {"experts": {"AB": lora, "joint/hops": dict(lora, steps=7)}}}}
    _store(tmp_path, "two_hop_reuse", a, 10.0, 0, result)
    _store(tmp_path, "two_hop_reuse", b, 20.0, 3, result)
    m = next(c for c in mechanism.grid("quick") if c.pipeline.base.key() == a.pipeline.base.key() and c.seed == 0)
    _store(tmp_path, "mechanism", m, 2.0, 10, {"base": {"steps": 300, "reached_target": True}})
    atomic_write_json(tmp_path / "models" / f"{a.pipeline.base.key()}-s0.json", {"seconds": 7.5})
    out = from_records(tmp_path)
    th, me = out["experiments"]["two_hop_reuse"], out["experiments"]["mechanism"]
    assert (th["cached"], th["configs"]) == (2, 12)
    assert th["worker_s"] == 30.0 and th["span_s"] == 4 * 60  # 07:00 -> 07:04
    assert (th["base_s"], th["bases"]) == (7.5, 1), "the shared base counts once"
    assert (th["lora_runs"], th["lora_steps"]) == (4, 24)
    assert (me["cached"], me["base_s"], me["lora_runs"]) == (1, 0.0, 0), "a base is charged to its first (earliest) user"
    assert out["total"]["worker_s"] == 32.0


@pytest.mark.parametrize("argv,needle", [
    pytest.param(["--results", "{tmp}/none"], "--results", id="no-results-folder"),
    pytest.param(["--results", "{tmp}", "--quick"], "--breakdown", id="with-quick"),
    pytest.param(["--results", "{tmp}"], "no cached record", id="empty-cache"),
])
def test_breakdown_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, needle):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["bench", "--breakdown", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "out").exists()


def test_agreement_counts_differences_steps_and_nan_on_one_side():
    from bench.phases import agreement

    nan = float("nan")
    a = {"x": [1.0, nan, nan, 0.5], "e": {"AB": {"steps": 3, "seconds": 1.0}, "BC": {"steps": 4}}}
    b = {"x": [1.00001, nan, 2.0, 0.7], "e": {"AB": {"steps": 3, "seconds": 9.0}, "BC": {"steps": 5}}, "y": 1}
    got = agreement(a, b)
    assert got["leaves"] == 6 and got["unmatched_leaves"] == 1  # seconds ignored, y only on one side
    assert got["leaves_differing_over_1e-4"] == 3 and got["max_abs_diff"] == float("inf")
    assert (got["lora_runs"], got["lora_runs_with_other_steps"]) == (2, 1)
def test_answer_positions_rows_compare_the_fast_and_full_logit_paths():
    pytest.importorskip("transformers")
    from bench.hf_lora import answer_positions
    from toymodels.pretrained import tiny_llama

    rows = answer_positions(tiny_llama(seeded(0)), "tiny", (2, 8), torch.device("cpu"), repeats=1)
    assert [r.name for r in rows] == ["hf_answer_logits_step_tiny", "hf_answer_logits_score_tiny"]
    assert all(r.value > 0 and r.reference > 0 and r.target == (">=", 1.0) for r in rows)


def test_latent_recipe_caps_steps_at_the_flops_budget_and_appends_one_line(tmp_path, monkeypatch):
    """bench/latent_recipe.py: a variant's step cap spends at most ``budget`` of today's FLOPs
    (and one more step would exceed it), the spec reaches the config, and a run appends one
    JSON line with its curves (run here on a tiny budget)."""
    import json

    from bench import latent_recipe as lr

    today = lr.presets.quick_base("latent")
    cfg, reference = lr.variant(lr.VARIANTS["E60R16_d64_wsd20"], 1 / 3)
    assert reference == lr.flops(today.train.steps, today.train.batch_size, lr.n_params(today.model))
    assert (cfg.task.graph.n_entities, cfg.task.graph.n_relations, cfg.model.d_model) == (60, 16, 64)
    assert cfg.train.schedule == "wsd" and cfg.train.decay_frac == 0.2
    per_step = lr.flops(1, cfg.train.batch_size, lr.n_params(cfg.model))
    assert cfg.train.steps * per_step <= reference / 3 < (cfg.train.steps + 1) * per_step
    tiny = {"graph": {"n_entities": 12, "n_relations": 3, "n_new": 4},
            "model": {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_mlp": 32},
            "train": {"schedule": "wsd", "warmup_steps": 0, "eval_every": 5}}
    monkeypatch.setitem(lr.VARIANTS, "tiny", tiny)
    log = tmp_path / "sweep.jsonl"
    assert lr.main(["tiny", "--seed", "0", "--budget", "0.0001", "--log", str(log)]) == 0
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert row["name"] == "tiny" and row["spec"] == tiny and row["steps"] == row["step_cap"] >= 5
    assert row["flops_vs_today"] <= 0.0001 and set(row["curves"]) >= {"test_id", "val_id"}
