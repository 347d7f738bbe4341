"""Checks on the files a user hands in, run before any work starts.

Each check raises ``ValueError`` (``FileNotFoundError`` for a missing file) whose message
is one line naming the file, the problem and the fix; the CLI prints it and exits 2.

- safetensors files are checked from their header (8-byte length + JSON), which is cheap:
  truncated, empty, random or pickled files are refused before any tensor is read;
- pickles are never loaded (``torch.load`` of a pickle can run code); a pickle, or a
  ``torch.save`` zip archive, is recognised by its first bytes and refused with the command
  that converts it;
- a PEFT ``adapter_config.json`` must describe a plain LoRA (``peft_type`` LORA, no DoRA,
  no ``lora_bias``, torch's weight layout) with well-typed ``r``, ``lora_alpha`` and
  patterns, and its tensors must be ``lora_A``/``lora_B`` pairs whose rank is the one the
  config gives (PEFT refuses a mismatch; we refuse it too rather than rescale silently);
- :func:`check_finite`: NaN or Inf in a weight is refused (PEFT's ``safe_merge`` idea);
- model folders: safetensors weights present and readable, ``config.json`` an object, a
  tokenizer when one is needed (:mod:`toymodels.pretrained` adds the checks that need
  transformers; :mod:`toymodels.gguf_header` checks GGUF files).
"""
from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import NamedTuple

import torch

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
               "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
NEVER_UNPICKLE = "lora-limits never unpickles (loading a pickle can run code)"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


class TensorInfo(NamedTuple):
    dtype: str
    shape: tuple[int, ...]


class NonFiniteError(ValueError):
    """A weight holds NaN or Inf; callers may offer an explicit opt-out."""


def check_finite(name: str, tensor: torch.Tensor,
                 why: str = "a diverged or corrupt checkpoint; retrain or re-export it") -> None:
    """Raise :class:`NonFiniteError` naming ``name`` (and ``why``) if ``tensor`` holds NaN or Inf."""
    if bool(torch.isfinite(tensor.sum())):  # NaN and Inf propagate into the sum: one pass, no copy
        return
    finite = torch.isfinite(tensor)  # the sum can also overflow: look entry by entry
    if not bool(finite.all()):
        nan = int(torch.isnan(tensor).sum())
        raise NonFiniteError(f"{name} holds {nan} NaN and {int((~finite).sum()) - nan} Inf of "
                             f"{tensor.numel()} entries: {why}")


def pickle_kind(head: bytes) -> str | None:
    """What a file that starts with ``head`` is, if it is a pickle or a ``torch.save`` archive."""
    if head[:4] == b"PK\x03\x04":
        return "a torch.save zip archive (pickles inside)"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a pickle"
    return None


def convert_hint(path: Path, out: str) -> str:
    return (f"convert it once, where you trust the file: python -c \"import torch; from safetensors.torch "
            f"import save_file; save_file(torch.load('{path}', weights_only=True), '{out}')\"")


def safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """``tensor name -> (dtype, shape)`` from a safetensors file's header, after checking that
    the header parses and that the file holds every byte it promises (no tensor is read)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if size >= 8 else None
        header = None
        if n is not None and n <= min(size - 8, MAX_HEADER):
            try:
                header = json.loads(fh.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
    if header is None:  # not safetensors: say what it is, if we can tell
        if kind := pickle_kind(head):
            raise ValueError(f"{path}: is {kind} renamed .safetensors, not safetensors; {NEVER_UNPICKLE}: "
                             + convert_hint(path, str(path.with_suffix('.converted.safetensors'))))
        if size < 8:
            raise ValueError(f"{path}: {'is empty' if size == 0 else f'has only {size} bytes'}, not a safetensors "
                             "file (truncated or never written): copy or save it again")
        if n > min(size - 8, MAX_HEADER):
            raise ValueError(f"{path}: not a safetensors file (its first 8 bytes promise a {n}-byte header in a "
                             f"{size}-byte file): corrupt, truncated or another format; save it again with safetensors")
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object: corrupt or another format; save it again")
    out, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = entry["dtype"], tuple(int(s) for s in entry["shape"])
            begin, stop = (int(x) for x in entry["data_offsets"])
            nbytes = DTYPE_BYTES[dtype] * math.prod(shape)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor {name!r} has a malformed header entry: corrupt file; save it again") from None
        if not 0 <= begin <= stop or stop - begin != nbytes:
            raise ValueError(f"{path}: tensor {name!r} of {dtype} {shape} claims bytes {begin}..{stop}, "
                             f"not {nbytes}: corrupt file; save it again")
        out[name], end = TensorInfo(dtype, shape), max(end, stop)
    if end > size - 8 - n:
        raise ValueError(f"{path}: truncated: its tensors need {end} bytes of data, the file holds "
                         f"{size - 8 - n}; copy or save it again")
    return out


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in ``path`` (``what`` says what it should be, for the message)."""
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" ({exc.msg}, line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ValueError(f"{path}: not valid JSON{where}: it should be {what}; fix or re-save it") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: holds a JSON {type(value).__name__}, not an object: it should be {what}")
    return value


# --- PEFT LoRA adapters ---------------------------------------------------------------------

def pattern_matches(key: str, path: str) -> bool:
    """PEFT's rule for ``rank_pattern``/``alpha_pattern``: ``key`` (a regex) matches a module
    path that ends with it after a dot."""
    return re.match(rf"(.*\.)?({key})$", path) is not None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_adapter_config(meta: dict, where: Path) -> None:
    """A plain LoRA config with well-typed fields (see the module docstring)."""
    peft_type = meta.get("peft_type")
    if peft_type != "LORA":
        raise ValueError(f"{where}: peft_type is {peft_type!r}: lora-limits reads LoRA adapters only (peft_type "
                         "\"LORA\"); IA3, LoHa, LoKr, prompt tuning and others have no B @ A delta to measure or merge")
    refused = {"use_dora": "DoRA rescales each column of W + delta by a learned magnitude, so the adapter is not "
                           "W + scale * B @ A; merge it with PEFT's merge_and_unload, or train a plain LoRA",
               "lora_bias": "lora_B carries a bias, which the LoRA algebra here (delta = scale * B @ A) leaves out"}
    # fan_in_fan_out (GPT-2's Conv1D) is read: it is the BASE weight's layout; PEFT's lora_A/lora_B
    # are (r, d_in)/(d_out, r) either way (toymodels.lora.linear_weight reads the base).
    for name, why in refused.items():
        if meta.get(name):
            raise ValueError(f"{where}: {name} is {meta[name]!r}: {why}")
    if not _is_int(meta.get("r")) or meta["r"] < 1:
        raise ValueError(f"{where}: r is {meta.get('r')!r}: need the LoRA rank, an integer >= 1")
    if not _is_real(meta.get("lora_alpha")):
        raise ValueError(f"{where}: lora_alpha is {meta.get('lora_alpha')!r}: need a finite number "
                         "(the LoRA scale is lora_alpha / r)")
    if not isinstance(meta.get("use_rslora", False), bool):
        raise ValueError(f"{where}: use_rslora is {meta['use_rslora']!r}: need true or false")
    dropout = meta.get("lora_dropout", 0.0)
    if not (_is_real(dropout) and 0 <= dropout < 1):
        raise ValueError(f"{where}: lora_dropout is {dropout!r}: need a number in [0, 1)")
    layers = meta.get("layers_to_transform")
    if not (layers is None or _is_int(layers) or (isinstance(layers, list) and all(map(_is_int, layers)))):
        raise ValueError(f"{where}: layers_to_transform is {layers!r}: need null, an integer or a list of integers")
    for name, ok, want in (("rank_pattern", lambda v: _is_int(v) and v >= 1, "an integer rank >= 1"),
                           ("alpha_pattern", _is_real, "a finite alpha")):
        patterns = meta.get(name) or {}
        if not isinstance(patterns, dict):
            raise ValueError(f"{where}: {name} is {patterns!r}: need an object mapping module regexes to values")
        for key, value in patterns.items():
            try:
                re.compile(rf"(.*\.)?({key})$")
            except re.error as exc:
                raise ValueError(f"{where}: {name} key {key!r} is not a valid regex ({exc}): fix the pattern") from None
            if not ok(value):
                raise ValueError(f"{where}: {name}[{key!r}] is {value!r}: need {want}")


def lora_pairs(header: dict[str, TensorInfo], where: Path) -> dict[str, tuple[str, str]]:
    """``stem -> (lora_A key, lora_B key)`` after checking, from the header alone, that every
    tensor is a floating-point 2-D ``lora_A``/``lora_B`` weight with its partner, and that
    ``A (r, d_in)`` and ``B (d_out, r)`` share ``r``."""
    suffixes = (".lora_A.weight", ".lora_B.weight")
    for key, info in header.items():
        if not key.endswith(suffixes):
            raise ValueError(f"{where}: holds {key!r}, not a lora_A/lora_B weight of a linear layer: lora-limits "
                             "reads plain LoRA only (no embedding LoRA, biases, DoRA magnitudes or modules_to_save)")
        if info.dtype not in FLOAT_DTYPES or len(info.shape) != 2:
            raise ValueError(f"{where}: {key} is {info.dtype} {info.shape}: a LoRA weight is a 2-D float matrix")
    pairs = {}
    for key in sorted(header):
        stem, _, kind = key[:-len(".weight")].rpartition(".")
        other = f"{stem}.{'lora_B' if kind == 'lora_A' else 'lora_A'}.weight"
        if other not in header:
            raise ValueError(f"{where}: {key} has no matching {other.rsplit('.', 2)[1]} weight: "
                             "an incomplete adapter; save it again")
        A, B = header[f"{stem}.lora_A.weight"].shape, header[f"{stem}.lora_B.weight"].shape
        if A[0] != B[1]:
            raise ValueError(f"{where}: {stem}: lora_A is {A} and lora_B is {B}; need A (r, d_in) and "
                             "B (d_out, r) with the same r")
        pairs[stem] = (f"{stem}.lora_A.weight", f"{stem}.lora_B.weight")
    if not pairs:
        raise ValueError(f"{where}: holds no lora_A/lora_B weights: not a LoRA adapter")
    return pairs


# --- model folders and GGUF files -------------------------------------------------------------

def model_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a Hugging Face model folder (one file or an index of shards);
    a folder with pickled weights only is refused, with the conversion command."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index, "a safetensors index with a weight_map").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: has no weight_map object: save the model again")
        files = [folder / name for name in sorted(set(map(str, weight_map.values())))]
        if missing := [f.name for f in files if not f.is_file()]:
            raise FileNotFoundError(f"{index}: names shard {missing[0]}, which is missing: copy every shard")
        return files
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{folder / pickles[0]}: the folder's only weights, a pickle; {NEVER_UNPICKLE}: convert it once, "
                         f"where you trust the file: python -c \"from transformers import AutoModelForCausalLM as M; "
                         f"M.from_pretrained('{folder}').save_pretrained('{folder}')\" (writes model.safetensors)")
    raise FileNotFoundError(f"{folder}: no model.safetensors (or model.safetensors.index.json): "
                            "save the model with save_pretrained")


def check_tokenizer_files(folder: Path) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{folder}: no tokenizer ({' or '.join(TOKENIZER_FILES)}): the protocol needs "
                                "one to read its prompts; save it into the folder with tokenizer.save_pretrained")


def scan_finite(path: Path) -> None:
    """:func:`check_finite` on every float tensor of a safetensors file, one tensor at a time."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        for name in fh.keys():
            tensor = fh.get_tensor(name)
            if tensor.is_floating_point():
                check_finite(f"{path}: {name}", tensor)
