"""Broken model folders and GGUF files through ``inspect --base``: every case is refused
with one line naming the file (:func:`bad_input_builders.assert_refused`)."""
from __future__ import annotations

import shutil

import pytest
import torch

from analysis.cli import main
from bad_input_builders import (MODEL, bin_only, edit_config, drop_keys, edit_json, edit_tensors, missing_shard,
                                truncate, assert_refused, inspect_argv, rng_bytes, tensors_of, write_adapter,
                                write_gguf)
from bad_input_builders import good_model  # noqa: F401  (a pytest fixture, used as an argument)

# (id, edit of the valid model folder, file the message names, words)
MODEL_CASES = [
    ("weights-truncated", lambda d: truncate(d / MODEL, 20_000), MODEL, "truncated"),
    ("weights-random-bytes", lambda d: (d / MODEL).write_bytes(rng_bytes((d / MODEL).stat().st_size)), MODEL,
     "not a safetensors file"),
    ("weights-empty", lambda d: (d / MODEL).write_bytes(b""), MODEL, "is empty"),
    ("weights-pickle-renamed", lambda d: torch.save(tensors_of(d / MODEL), d / MODEL), MODEL, "never unpickles"),
    ("weights-bin-only", bin_only, "pytorch_model.bin", "never unpickles"),
    ("no-weights", lambda d: (d / MODEL).unlink(), "", "no model.safetensors"),
    ("index-names-missing-shard", missing_shard, "model.safetensors.index.json", "missing"),
    ("weights-lack-a-layer", lambda d: edit_tensors(d / MODEL, lambda t: {k: v for k, v in t.items()
                                                                          if "layers.1." not in k}),
     "", "lack 9 tensor(s)"),
    ("config-not-json", lambda d: (d / "config.json").write_text("{model_type: llama"), "config.json", "not valid JSON"),
    ("config-a-list", lambda d: (d / "config.json").write_text("[1, 2]"), "config.json", "not an object"),
    ("config-no-model_type", lambda d: edit_json(d / "config.json", drop_keys("model_type")), "config.json", "model_type"),
    ("config-unknown-model_type", lambda d: edit_config(d, model_type="no-such-model"), "config.json",
     "reading the model config"),
    ("config-does-not-fit-weights", lambda d: edit_config(d, hidden_size=64), "model.safetensors",
     "config.json builds"),
    ("config-impossible-heads", lambda d: edit_config(d, num_attention_heads=5, head_dim=None), "config.json", "failed"),
]


@pytest.mark.parametrize("edit, names, words", [pytest.param(*c[1:], id=c[0]) for c in MODEL_CASES])
def test_inspect_base_refuses_broken_model_folder(tmp_path, capsys, good_model, edit, names, words):
    folder = shutil.copytree(good_model, tmp_path / "model")
    edit(folder)
    adapter = write_adapter(tmp_path / "adapter")
    assert_refused(capsys, inspect_argv(tmp_path, adapter, "--base", folder, "--no-figures"), folder / names,
                   words, tmp_path / "results")


def test_inspect_base_needs_no_tokenizer(tmp_path, capsys, good_model):
    folder = shutil.copytree(good_model, tmp_path / "model",
                             ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    adapter = write_adapter(tmp_path / "adapter")
    assert main(inspect_argv(tmp_path, adapter, "--base", folder, "--no-figures")) == 0, capsys.readouterr().err


GGUF_CASES = [
    ("gguf-magic-then-garbage", lambda p: p.write_bytes(b"GGUF" + rng_bytes(5000)), "starts like a GGUF file"),
    ("gguf-v3-then-garbage", lambda p: p.write_bytes(b"GGUF\x03\x00\x00\x00" + rng_bytes(5000)), "claims"),
    ("gguf-truncated-data", lambda p: truncate(write_gguf(p), -40), "truncated: its tensors need"),
    ("gguf-truncated-header", lambda p: truncate(write_gguf(p), 100), "truncated or corrupt"),
    ("gguf-empty", lambda p: p.write_bytes(b""), "not a GGUF file"),
    ("gguf-wrong-magic", lambda p: p.write_bytes(b"PK\x03\x04" + rng_bytes(100)), "not a GGUF file"),
]


@pytest.mark.parametrize("edit, words", [pytest.param(*c[1:], id=c[0]) for c in GGUF_CASES])
def test_inspect_base_refuses_broken_gguf(tmp_path, capsys, edit, words):
    path = tmp_path / "model.gguf"
    edit(path)
    adapter = write_adapter(tmp_path / "adapter")
    assert_refused(capsys, inspect_argv(tmp_path, adapter, "--base", path, "--no-figures"), path, words,
                   tmp_path / "results")


