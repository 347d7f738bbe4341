"""Broken inputs to ``run pretrained_two_hop``: models its preflight must stop before the
sweep starts, bad ``--set`` values, and a real process that prints one line and exits 2."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from bad_input_builders import (MODEL, ROOT, WEIGHTS, bin_only, edit_config, nan_weight, truncate, assert_refused,
                                inspect_argv, rng_bytes, run_argv, transformers, write_adapter, write_gguf)
from bad_input_builders import good_model  # noqa: F401  (a pytest fixture, used as an argument)

def _other_model(config):
    def replace(d):
        for p in d.iterdir():
            if not p.name.startswith(("tokenizer", "special")):
                p.unlink()
        transformers.AutoModelForCausalLM.from_config(config()).save_pretrained(d)
    return replace


_gpt2 = _other_model(lambda: transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=8, n_positions=16))
_falcon = _other_model(lambda: transformers.FalconConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                                         vocab_size=8, bos_token_id=1, eos_token_id=2))


# cases the preflight of `run pretrained_two_hop --set model=...` must stop before the sweep
RUN_CASES = [
    ("folder-weights-truncated", "folder", lambda d: truncate(d / MODEL, 20_000), MODEL, "truncated"),
    ("folder-no-tokenizer", "folder", lambda d: [p.unlink() for p in d.glob("tokenizer*")], "", "no tokenizer"),
    ("folder-tokenizer-garbage", "folder", lambda d: (d / "tokenizer.json").write_text("{"), "",
     "loading the tokenizer"),
    ("folder-config-not-json", "folder", lambda d: (d / "config.json").write_text("]"), "config.json",
     "not valid JSON"),
    ("folder-config-does-not-fit", "folder", lambda d: edit_config(d, intermediate_size=48), MODEL, "config.json builds"),
    ("folder-nan-weight", "folder", nan_weight, MODEL, "model.layers.1.mlp.up_proj.weight holds 1 NaN"),
    ("folder-weights-bin-only", "folder", bin_only, "pytorch_model.bin", "never unpickles"),
    ("folder-gpt2-lacks-lora.targets", "folder", _gpt2, "", "lora.targets contains ['q', 'v']: roles of this model "
     "are qkv, o, up, down"),
    ("folder-no-role-map", "folder", _falcon, "", "model_type 'falcon' has no role map"),
    ("gguf-magic-then-garbage", "gguf", lambda p: p.write_bytes(b"GGUF" + rng_bytes(5000)), "",
     "starts like a GGUF file"),
    ("gguf-truncated", "gguf", lambda p: truncate(write_gguf(p), -40), "", "truncated"),
    ("gguf-no-tokenizer", "gguf", lambda p: write_gguf(p, tokenizer=False), "", "no tokenizer"),
]


@pytest.mark.parametrize("kind, edit, names, words", [pytest.param(*c[1:], id=c[0]) for c in RUN_CASES])
def test_run_preflight_refuses_broken_model(tmp_path, capsys, good_model, kind, edit, names, words):
    source = shutil.copytree(good_model, tmp_path / "model") if kind == "folder" else tmp_path / "model.gguf"
    edit(source)
    assert_refused(capsys, run_argv(tmp_path, source), source / names if names else source, words,
                   tmp_path / "results")


@pytest.mark.parametrize("assignment, words", [
    pytest.param("protocol.finetune.lr=inf", "must be a finite number", id="float-inf"),
    pytest.param("protocol.lora.alpha=nan", "must be a finite number", id="float-nan"),
    pytest.param("protocol.lora.rank=2.5", "must be an integer", id="int-as-float"),
    pytest.param("protocol.nope=1", "unknown config key", id="unknown-key"),
    pytest.param("model=", "give a .gguf file", id="model-empty")])
def test_bad_set_value_is_one_line(tmp_path, capsys, assignment, words):
    argv = run_argv(tmp_path, "unused")[:-2] + ["--set", assignment]
    assert_refused(capsys, argv, assignment.split("=")[0], words, tmp_path / "results")


# --- a real process: no traceback on the terminal -------------------------------------------

def _subprocess(argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("case", [pytest.param("adapter-pickle", id="inspect-pickle-renamed-safetensors"),
                                  pytest.param("gguf-garbage", id="run-gguf-magic-then-garbage")])
def test_real_process_prints_one_line_and_exits_2(tmp_path, case):
    if case == "adapter-pickle":
        folder = write_adapter(tmp_path / "adapter")
        torch.save({"x": torch.ones(2)}, folder / WEIGHTS)
        argv, names = inspect_argv(tmp_path, folder), folder / WEIGHTS
    else:
        names = tmp_path / "model.gguf"
        names.write_bytes(b"GGUF" + rng_bytes(5000))
        argv = run_argv(tmp_path, names)
    done = _subprocess(argv)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(names) in lines[0] and lines[0].startswith("lora-limits "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "results").exists()
