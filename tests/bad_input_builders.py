"""Builders of the broken-input corpus (tests/test_bad_inputs_*.py): a valid PEFT adapter
folder written by hand (an oracle independent of ``toymodels.peft_checkpoint.save_adapter``),
a valid tiny Llama folder and GGUF file, the edits that break them, and the one check every
case must pass (:func:`assert_refused`): refused before any work with exactly one stderr
line that names the file and the problem, exit status 2, no traceback, nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from analysis.cli import main

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from toymodels.pretrained import tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
Q, DOWN = "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"  # tiny_llama: (32, 32), (32, 64)
PREFIX = "base_model.model."


def write_adapter(folder: Path, r: int = 2, **config) -> Path:
    """A valid PEFT LoRA folder for :func:`tiny_llama`'s q_proj (layer 0) and down_proj (layer 1)."""
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for path, (d_out, d_in) in ((Q, (32, 32)), (DOWN, (32, 64))):
        tensors[f"{PREFIX}{path}.lora_A.weight"] = torch.randn(r, d_in, generator=gen)
        tensors[f"{PREFIX}{path}.lora_B.weight"] = torch.randn(d_out, r, generator=gen)
    folder.mkdir(parents=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    meta = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 4, "use_rslora": False,
            "lora_dropout": 0.0, "target_modules": ["q_proj", "down_proj"], "fan_in_fan_out": False,
            "use_dora": False, "bias": "none", "rank_pattern": {}, "alpha_pattern": {}, **config}
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    return folder


def word_tokenizer_folder(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", "a", "b"])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    """A tiny random Llama folder with a word tokenizer: every model case is a broken copy."""
    folder = tmp_path_factory.mktemp("model") / "llama"
    tiny_llama(torch.Generator().manual_seed(0)).save_pretrained(folder)
    word_tokenizer_folder(folder)
    return folder


def write_gguf(path: Path, tokenizer: bool = True) -> Path:
    """A small, well-formed GGUF file (two F32 tensors; not a model transformers can build)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def edit_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    """A copy in memory: rewriting a file that is still memory-mapped would crash (SIGBUS)."""
    return {k: v.clone() for k, v in load_file(path).items()}


def edit_tensors(path: Path, change) -> None:
    save_file(change(tensors_of(path)), path)


def set_tensor(key, value):
    def change(tensors):
        tensors[key] = value
        return tensors
    return change


def drop_keys(*keys):
    return lambda d: {k: v for k, v in d.items() if k not in keys}


def nan_at(tensor_key):
    def change(tensors):
        tensors[tensor_key] = tensors[tensor_key].clone()
        tensors[tensor_key][0, 0] = float("nan")
        return tensors
    return change


A_Q, B_Q = f"{PREFIX}{Q}.lora_A.weight", f"{PREFIX}{Q}.lora_B.weight"
WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
rng_bytes = np.random.default_rng(0).bytes


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep if keep is not None else len(data) - 10])


MODEL = "model.safetensors"


def edit_config(d, **change):
    edit_json(d / "config.json", lambda c: {**c, **change})


def bin_only(d):
    torch.save(tensors_of(d / MODEL), d / "pytorch_model.bin")
    (d / MODEL).unlink()


def nan_weight(d):
    edit_tensors(d / MODEL, nan_at("model.layers.1.mlp.up_proj.weight"))


def missing_shard(d):
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    (d / MODEL).unlink()


def assert_refused(capsys, argv, names: str | Path, words: str, results: Path) -> None:
    capsys.readouterr()  # drop what building the case printed
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(names) in lines[0] and words in lines[0], lines[0]
    assert "Traceback" not in err + out and "configs," not in out  # refused before any sweep
    assert not results.exists() or not any(results.rglob("*")), sorted(results.rglob("*"))


def inspect_argv(tmp_path, *args) -> list[str]:
    res = tmp_path / "results"
    return ["inspect", *map(str, args), "--out", str(res / "inspect"), "--cache", str(res / "pretrained")]


def run_argv(tmp_path, model) -> list[str]:
    return ["run", "pretrained_two_hop", "--quiet", "--results", str(tmp_path / "results"),
            "--figures", str(tmp_path / "results" / "figures"), "--set", f"model={model}"]
