"""A corpus of broken user input, generated here, run through the CLI: every case is refused
before any work with exactly one stderr line that names the file and the problem, exit
status 2, no traceback, and nothing written under the results folder.

Adapters go through ``inspect``; model folders and GGUF files through ``inspect --base``
and through ``run pretrained_two_hop --set model=...``, whose preflight must stop them
before the sweep starts. The adapter folders are written by hand in PEFT's format (an
oracle independent of ``toymodels.peft_checkpoint.save_adapter``)."""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from analysis.cli import main
from toymodels.validate import TensorInfo, check_finite, safetensors_header

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from toymodels.pretrained import tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
Q, DOWN = "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"  # tiny_llama: (32, 32), (32, 64)
PREFIX = "base_model.model."


# --- builders ----------------------------------------------------------------------------

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


def _edit_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    """A copy in memory: rewriting a file that is still memory-mapped would crash (SIGBUS)."""
    return {k: v.clone() for k, v in load_file(path).items()}


def _edit_tensors(path: Path, change) -> None:
    save_file(change(tensors_of(path)), path)


def _set(key, value):
    def change(tensors):
        tensors[key] = value
        return tensors
    return change


def _drop(*keys):
    return lambda d: {k: v for k, v in d.items() if k not in keys}


def _nan(tensor_key):
    def change(tensors):
        tensors[tensor_key] = tensors[tensor_key].clone()
        tensors[tensor_key][0, 0] = float("nan")
        return tensors
    return change


A_Q, B_Q = f"{PREFIX}{Q}.lora_A.weight", f"{PREFIX}{Q}.lora_B.weight"
WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
rng_bytes = np.random.default_rng(0).bytes


def _truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep if keep is not None else len(data) - 10])


# (id, edit of a valid adapter folder, file the message names, words it must contain)
ADAPTER_CASES = [
    ("st-empty", lambda d: (d / WEIGHTS).write_bytes(b""), WEIGHTS, "is empty"),
    ("st-truncated", lambda d: _truncate(d / WEIGHTS), WEIGHTS, "truncated"),
    ("st-header-only", lambda d: _truncate(d / WEIGHTS, 6), WEIGHTS, "has only 6 bytes"),
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
    ("cfg-no-lora_alpha", lambda d: _edit_json(d / CONFIG, lambda m: _drop("lora_alpha")(m)), CONFIG, "lora_alpha"),
    ("cfg-no-r", lambda d: _edit_json(d / CONFIG, lambda m: _drop("r")(m)), CONFIG, "r is None"),
    ("cfg-r-a-string", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "r": "2"}), CONFIG, "integer >= 1"),
    ("cfg-alpha-a-bool", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "lora_alpha": True}), CONFIG, "lora_alpha"),
    ("cfg-alpha-nan", lambda d: (d / CONFIG).write_text((d / CONFIG).read_text().replace('"lora_alpha": 4',
                                                                                        '"lora_alpha": NaN')),
     CONFIG, "finite number"),
    ("cfg-bad-alpha_pattern-regex", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "alpha_pattern": {"q_proj[": 8}}),
     CONFIG, "not a valid regex"),
    ("cfg-bad-rank_pattern-regex", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "rank_pattern": {"(q": 2}}),
     CONFIG, "not a valid regex"),
    ("cfg-alpha_pattern-a-list", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "alpha_pattern": [1]}),
     CONFIG, "alpha_pattern"),
    ("cfg-alpha_pattern-value-text", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "alpha_pattern": {"q_proj": "x"}}),
     CONFIG, "finite alpha"),
    ("cfg-layers-a-string", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "layers_to_transform": "0"}),
     CONFIG, "layers_to_transform"),
    ("cfg-dora", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "use_dora": True}), CONFIG, "DoRA"),
    ("cfg-lora_bias", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "lora_bias": True}), CONFIG, "bias"),
    ("cfg-ia3", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "peft_type": "IA3"}), CONFIG, "'IA3'"),
    ("cfg-loha", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "peft_type": "LOHA"}), CONFIG, "LoRA adapters only"),
    ("cfg-no-peft_type", lambda d: _edit_json(d / CONFIG, lambda m: _drop("peft_type")(m)), CONFIG, "peft_type is None"),
    ("cfg-r8-tensors-rank2", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "r": 8}), CONFIG, "gives module"),
    ("cfg-rank_pattern-mismatch", lambda d: _edit_json(d / CONFIG, lambda m: {**m, "rank_pattern": {"q_proj": 4}}),
     CONFIG, "rank_pattern gives module model.layers.0.self_attn.q_proj rank 4"),
    ("nan-in-lora_B", lambda d: _edit_tensors(d / WEIGHTS, _nan(B_Q)), WEIGHTS, "1 NaN"),
    ("inf-in-lora_A", lambda d: _edit_tensors(d / WEIGHTS, _set(A_Q, torch.full((2, 32), float("inf")))),
     WEIGHTS, "64 Inf"),
    ("lora_A-without-lora_B", lambda d: _edit_tensors(d / WEIGHTS, _drop(B_Q)), WEIGHTS, "no matching lora_B"),
    ("lora_B-without-lora_A", lambda d: _edit_tensors(d / WEIGHTS, _drop(A_Q)), WEIGHTS, "no matching lora_A"),
    ("ranks-of-A-and-B-differ", lambda d: _edit_tensors(d / WEIGHTS, _set(B_Q, torch.ones(32, 3))), WEIGHTS,
     "same r"),
    ("1-d-lora_A", lambda d: _edit_tensors(d / WEIGHTS, _set(A_Q, torch.ones(64))), WEIGHTS, "2-D float matrix"),
    ("integer-lora_A", lambda d: _edit_tensors(d / WEIGHTS, _set(A_Q, torch.ones(2, 32, dtype=torch.int32))),
     WEIGHTS, "I32"),
    ("dora-magnitude-tensor", lambda d: _edit_tensors(d / WEIGHTS, _set(f"{PREFIX}{Q}.lora_magnitude_vector",
                                                                        torch.ones(32))), WEIGHTS, "DoRA magnitudes"),
    ("no-lora-tensors", lambda d: save_file({}, d / WEIGHTS), WEIGHTS, "no lora_A/lora_B"),
]


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


# --- model folders and GGUF files -----------------------------------------------------------

MODEL = "model.safetensors"


def _config(d, **change):
    _edit_json(d / "config.json", lambda c: {**c, **change})


def _bin_only(d):
    torch.save(tensors_of(d / MODEL), d / "pytorch_model.bin")
    (d / MODEL).unlink()


def _nan_weight(d):
    _edit_tensors(d / MODEL, _nan("model.layers.1.mlp.up_proj.weight"))


def _missing_shard(d):
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    (d / MODEL).unlink()


# (id, edit of the valid model folder, file the message names, words)
MODEL_CASES = [
    ("weights-truncated", lambda d: _truncate(d / MODEL, 20_000), MODEL, "truncated"),
    ("weights-random-bytes", lambda d: (d / MODEL).write_bytes(rng_bytes((d / MODEL).stat().st_size)), MODEL,
     "not a safetensors file"),
    ("weights-empty", lambda d: (d / MODEL).write_bytes(b""), MODEL, "is empty"),
    ("weights-pickle-renamed", lambda d: torch.save(tensors_of(d / MODEL), d / MODEL), MODEL, "never unpickles"),
    ("weights-bin-only", _bin_only, "pytorch_model.bin", "never unpickles"),
    ("no-weights", lambda d: (d / MODEL).unlink(), "", "no model.safetensors"),
    ("index-names-missing-shard", _missing_shard, "model.safetensors.index.json", "missing"),
    ("weights-lack-a-layer", lambda d: _edit_tensors(d / MODEL, lambda t: {k: v for k, v in t.items()
                                                                          if "layers.1." not in k}),
     "", "lack 9 tensor(s)"),
    ("config-not-json", lambda d: (d / "config.json").write_text("{model_type: llama"), "config.json", "not valid JSON"),
    ("config-a-list", lambda d: (d / "config.json").write_text("[1, 2]"), "config.json", "not an object"),
    ("config-no-model_type", lambda d: _edit_json(d / "config.json", _drop("model_type")), "config.json", "model_type"),
    ("config-unknown-model_type", lambda d: _config(d, model_type="no-such-model"), "config.json",
     "reading the model config"),
    ("config-does-not-fit-weights", lambda d: _config(d, hidden_size=64), "model.safetensors",
     "config.json builds"),
    ("config-impossible-heads", lambda d: _config(d, num_attention_heads=5, head_dim=None), "config.json", "failed"),
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
    ("gguf-truncated-data", lambda p: _truncate(write_gguf(p), -40), "truncated: its tensors need"),
    ("gguf-truncated-header", lambda p: _truncate(write_gguf(p), 100), "truncated or corrupt"),
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
    ("folder-weights-truncated", "folder", lambda d: _truncate(d / MODEL, 20_000), MODEL, "truncated"),
    ("folder-no-tokenizer", "folder", lambda d: [p.unlink() for p in d.glob("tokenizer*")], "", "no tokenizer"),
    ("folder-tokenizer-garbage", "folder", lambda d: (d / "tokenizer.json").write_text("{"), "",
     "loading the tokenizer"),
    ("folder-config-not-json", "folder", lambda d: (d / "config.json").write_text("]"), "config.json",
     "not valid JSON"),
    ("folder-config-does-not-fit", "folder", lambda d: _config(d, intermediate_size=48), MODEL, "config.json builds"),
    ("folder-nan-weight", "folder", _nan_weight, MODEL, "model.layers.1.mlp.up_proj.weight holds 1 NaN"),
    ("folder-weights-bin-only", "folder", _bin_only, "pytorch_model.bin", "never unpickles"),
    ("folder-gpt2-lacks-lora.targets", "folder", _gpt2, "", "lora.targets contains ['q', 'v']: roles of this model "
     "are qkv, o, up, down"),
    ("folder-no-role-map", "folder", _falcon, "", "model_type 'falcon' has no role map"),
    ("gguf-magic-then-garbage", "gguf", lambda p: p.write_bytes(b"GGUF" + rng_bytes(5000)), "",
     "starts like a GGUF file"),
    ("gguf-truncated", "gguf", lambda p: _truncate(write_gguf(p), -40), "", "truncated"),
    ("gguf-no-tokenizer", "gguf", lambda p: write_gguf(p, tokenizer=False), "", "no tokenizer"),
]


def run_argv(tmp_path, model) -> list[str]:
    return ["run", "pretrained_two_hop", "--quiet", "--results", str(tmp_path / "results"),
            "--figures", str(tmp_path / "results" / "figures"), "--set", f"model={model}"]


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
