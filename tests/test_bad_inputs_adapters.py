"""Broken adapter folders through ``inspect``: every case is refused with one line naming
the file (:func:`bad_input_builders.assert_refused`); and the input checks of
:mod:`toymodels.validate` behind them, where their fast paths could be wrong."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from analysis.cli import main
from bad_input_builders import (A_Q, B_Q, CONFIG, PREFIX, Q, WEIGHTS, drop_keys, edit_json, edit_tensors, nan_at, set_tensor,
                                truncate, assert_refused, inspect_argv, rng_bytes, tensors_of, write_adapter)
from bad_input_builders import good_model  # noqa: F401  (a pytest fixture, used as an argument)
from toymodels.validate import TensorInfo, check_finite, safetensors_header

# (id, edit of a valid adapter folder, file the message names, words it must contain)
ADAPTER_CASES = [
    ("st-empty", lambda d: (d / WEIGHTS).write_bytes(b""), WEIGHTS, "is empty"),
    ("st-truncated", lambda d: truncate(d / WEIGHTS), WEIGHTS, "truncated"),
    ("st-header-only", lambda d: truncate(d / WEIGHTS, 6), WEIGHTS, "has only 6 bytes"),
    ("st-random-bytes", lambda d: (d / WEIGHTS).write_bytes(rng_bytes(4096)), WEIGHTS, "not a safetensors file"),
    ("st-torch-save-renamed", lambda d: torch.save({"x": torch.ones(2)}, d / WEIGHTS), WEIGHTS, "never unpickles"),
    ("st-pickle-renamed", lambda d: (d / WEIGHTS).write_bytes(pickle.dumps({"x": 1})), WEIGHTS, "is a pickle"),
    ("st-header-a-list", lambda d: (d / WEIGHTS).write_bytes(len(b"[1]").to_bytes(8, "little") + b"[1]"),
     WEIGHTS, "not a JSON object"),
    ("bin-only", lambda d: (torch.save(tensors_of(d / WEIGHTS), d / "adapter_model.bin"), (d / WEIGHTS).unlink()),
     "adapter_model.bin", "never unpickles"),
    ("no-config", lambda d: (d / CONFIG).unlink(), CONFIG, "not a PEFT adapter folder"),
    ("no-weights", lambda d: (d / WEIGHTS).unlink(), WEIGHTS, "no such file"),
    ("cfg-not-json", lambda d: (d / CONFIG).write_text("{oops"), CONFIG, "not valid JSON"),
    ("cfg-a-list", lambda d: (d / CONFIG).write_text("[]"), CONFIG, "not an object"),
    ("cfg-no-lora_alpha", lambda d: edit_json(d / CONFIG, lambda m: drop_keys("lora_alpha")(m)), CONFIG, "lora_alpha"),
    ("cfg-no-r", lambda d: edit_json(d / CONFIG, lambda m: drop_keys("r")(m)), CONFIG, "r is None"),
    ("cfg-r-a-string", lambda d: edit_json(d / CONFIG, lambda m: {**m, "r": "2"}), CONFIG, "integer >= 1"),
    ("cfg-alpha-a-bool", lambda d: edit_json(d / CONFIG, lambda m: {**m, "lora_alpha": True}), CONFIG, "lora_alpha"),
    ("cfg-alpha-nan", lambda d: (d / CONFIG).write_text((d / CONFIG).read_text().replace('"lora_alpha": 4',
                                                                                        '"lora_alpha": NaN')),
     CONFIG, "finite number"),
    ("cfg-bad-alpha_pattern-regex", lambda d: edit_json(d / CONFIG, lambda m: {**m, "alpha_pattern": {"q_proj[": 8}}),
     CONFIG, "not a valid regex"),
    ("cfg-bad-rank_pattern-regex", lambda d: edit_json(d / CONFIG, lambda m: {**m, "rank_pattern": {"(q": 2}}),
     CONFIG, "not a valid regex"),
    ("cfg-alpha_pattern-a-list", lambda d: edit_json(d / CONFIG, lambda m: {**m, "alpha_pattern": [1]}),
     CONFIG, "alpha_pattern"),
    ("cfg-alpha_pattern-value-text", lambda d: edit_json(d / CONFIG, lambda m: {**m, "alpha_pattern": {"q_proj": "x"}}),
     CONFIG, "finite alpha"),
    ("cfg-layers-a-string", lambda d: edit_json(d / CONFIG, lambda m: {**m, "layers_to_transform": "0"}),
     CONFIG, "layers_to_transform"),
    ("cfg-dora", lambda d: edit_json(d / CONFIG, lambda m: {**m, "use_dora": True}), CONFIG, "DoRA"),
    ("cfg-lora_bias", lambda d: edit_json(d / CONFIG, lambda m: {**m, "lora_bias": True}), CONFIG, "bias"),
    ("cfg-ia3", lambda d: edit_json(d / CONFIG, lambda m: {**m, "peft_type": "IA3"}), CONFIG, "'IA3'"),
    ("cfg-loha", lambda d: edit_json(d / CONFIG, lambda m: {**m, "peft_type": "LOHA"}), CONFIG, "LoRA adapters only"),
    ("cfg-no-peft_type", lambda d: edit_json(d / CONFIG, lambda m: drop_keys("peft_type")(m)), CONFIG, "peft_type is None"),
    ("cfg-r8-tensors-rank2", lambda d: edit_json(d / CONFIG, lambda m: {**m, "r": 8}), CONFIG, "gives module"),
    ("cfg-rank_pattern-mismatch", lambda d: edit_json(d / CONFIG, lambda m: {**m, "rank_pattern": {"q_proj": 4}}),
     CONFIG, "rank_pattern gives module model.layers.0.self_attn.q_proj rank 4"),
    ("nan-in-lora_B", lambda d: edit_tensors(d / WEIGHTS, nan_at(B_Q)), WEIGHTS, "1 NaN"),
    ("inf-in-lora_A", lambda d: edit_tensors(d / WEIGHTS, set_tensor(A_Q, torch.full((2, 32), float("inf")))),
     WEIGHTS, "64 Inf"),
    ("lora_A-without-lora_B", lambda d: edit_tensors(d / WEIGHTS, drop_keys(B_Q)), WEIGHTS, "no matching lora_B"),
    ("lora_B-without-lora_A", lambda d: edit_tensors(d / WEIGHTS, drop_keys(A_Q)), WEIGHTS, "no matching lora_A"),
    ("ranks-of-A-and-B-differ", lambda d: edit_tensors(d / WEIGHTS, set_tensor(B_Q, torch.ones(32, 3))), WEIGHTS,
     "same r"),
    ("1-d-lora_A", lambda d: edit_tensors(d / WEIGHTS, set_tensor(A_Q, torch.ones(64))), WEIGHTS, "2-D float matrix"),
    ("integer-lora_A", lambda d: edit_tensors(d / WEIGHTS, set_tensor(A_Q, torch.ones(2, 32, dtype=torch.int32))),
     WEIGHTS, "I32"),
    ("dora-magnitude-tensor", lambda d: edit_tensors(d / WEIGHTS, set_tensor(f"{PREFIX}{Q}.lora_magnitude_vector",
                                                                        torch.ones(32))), WEIGHTS, "DoRA magnitudes"),
    ("no-lora-tensors", lambda d: save_file({}, d / WEIGHTS), WEIGHTS, "no lora_A/lora_B"),
]


@pytest.mark.parametrize("edit, names, words", [pytest.param(*c[1:], id=c[0]) for c in ADAPTER_CASES])
def test_broken_adapter_is_one_line(tmp_path, capsys, edit, names, words):
    folder = write_adapter(tmp_path / "adapter")
    edit(folder)
    assert_refused(capsys, inspect_argv(tmp_path, folder), folder / names, words, tmp_path / "results")


def test_the_corpus_starts_from_a_valid_adapter(tmp_path, capsys, good_model):
    """The unedited adapter is read (and fits the unedited base): the refusals above are the edits'."""
    folder = write_adapter(tmp_path / "adapter")
    assert main(inspect_argv(tmp_path, folder, "--base", good_model, "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["adapters"]["adapter"]["rank"] == [2]


# --- the checks themselves --------------------------------------------------------------------

def test_finite_check_is_exact_where_the_sum_overflows():
    """The fast path (a finite sum) falls back to an entry-wise check when the sum overflows."""
    big = torch.full((4,), 3e38)  # finite entries, infinite sum
    check_finite("big", big)
    big[2] = float("inf")
    with pytest.raises(ValueError, match="big holds 0 NaN and 1 Inf of 4 entries"):
        check_finite("big", big)


def test_safetensors_whose_length_looks_like_a_pickle_is_read(tmp_path):
    """A header of 0x0280 bytes starts the file with 80 02, a pickle's protocol-2 opcode: the
    file is still safetensors (the pickle sniffing only explains files that fail to parse)."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode().ljust(0x280)
    path = tmp_path / "w.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + torch.tensor([1.0, 2.0]).numpy().tobytes())
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert safetensors_header(path) == {"w": TensorInfo("F32", (2,))}
    assert load_file(path)["w"].tolist() == [1.0, 2.0]  # the safetensors library agrees
