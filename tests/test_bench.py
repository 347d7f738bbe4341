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


def test_answer_positions_rows_compare_the_fast_and_full_logit_paths():
    pytest.importorskip("transformers")
    from bench.hf_lora import answer_positions
    from toymodels.pretrained import tiny_llama

    rows = answer_positions(tiny_llama(seeded(0)), "tiny", (2, 8), torch.device("cpu"), repeats=1)
    assert [r.name for r in rows] == ["hf_answer_logits_step_tiny", "hf_answer_logits_score_tiny"]
    assert all(r.value > 0 and r.reference > 0 and r.target == (">=", 1.0) for r in rows)
