"""Check a GGUF file from its header, before it is converted: metadata, tensor table and
whether the file holds every byte its tensors need. Nothing is de-quantised.

Layout (GGUF v2/v3, little-endian): ``b"GGUF"``, version ``u32``, tensor count ``u64``,
metadata count ``u64``; then metadata entries (key string, value type ``u32``, value) and
tensor entries (name string, ``n_dims u32``, ``dims u64 x n_dims``, ggml type ``u32``,
offset ``u64``); the tensor data starts at the next multiple of ``general.alignment``
(default 32) and each offset counts from there. A string is ``u64`` length + UTF-8 bytes.

Reading a real file this way takes milliseconds (the tokenizer's ~50k strings are skipped,
not decoded), where ``gguf.GGUFReader`` and transformers' config reader take seconds.
"""
from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS


class _Corrupt(Exception):
    pass


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise _Corrupt(f"ends inside its header (at byte {self.pos})")
        value = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value if len(value) > 1 else value[0]

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise _Corrupt(f"a length at byte {self.pos} points past the end of the file")
        self.pos += n

    def string(self, keep: bool = True) -> str | None:
        n = self.take("<Q")
        start = self.pos
        self.skip(n)
        if not keep:
            return None
        try:
            return bytes(self.buf[start:self.pos]).decode("utf-8")
        except UnicodeDecodeError:
            raise _Corrupt(f"a string at byte {start} is not UTF-8") from None

    def value(self, kind: int, keep: bool = True):
        """One metadata value; arrays come back as their length (their items are skipped)."""
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string(keep)
        if kind == _ARRAY:
            item, count = self.take("<IQ")
            if item in _SCALARS:
                self.skip(count * struct.calcsize(_SCALARS[item]))
            else:
                if count > (len(self.buf) - self.pos) // 8:  # every string or array needs >= 8 bytes
                    raise _Corrupt(f"an array at byte {self.pos} claims {count} items")
                for _ in range(count):
                    self.value(item, keep=False)
            return count
        raise _Corrupt(f"unknown metadata value type {kind} at byte {self.pos}")


def read_gguf_header(path: str | Path) -> tuple[dict, dict[str, tuple[tuple[int, ...], int]]]:
    """``(metadata, tensors)``: metadata key -> scalar, string, or array length; tensor name ->
    (dims in ggml order, ggml type). ValueError naming the file when the header does not
    parse, a tensor type is unknown, or the file is shorter than its tensors need."""
    try:
        import gguf  # the ggml block sizes
    except ImportError:
        raise ImportError("reading a GGUF file needs the 'pretrained' extra: run make install-pretrained") from None

    path = Path(path)
    if path.stat().st_size < 24:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, shorter than a GGUF header: truncated; "
                         "download or convert it again")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf)
        try:
            magic, version, n_tensors, n_meta = cur.take("<4sIQQ")
            if magic != b"GGUF" or version not in (2, 3):
                raise _Corrupt(f"version {version}; GGUF v2 and v3 are read")
            if n_meta > len(buf) // 12 or n_tensors > len(buf) // 24:
                raise _Corrupt(f"claims {n_meta} metadata entries and {n_tensors} tensors")
            meta = {}
            for _ in range(n_meta):
                key = cur.string()
                meta[key] = cur.value(cur.take("<I"))
            tensors = {}
            for _ in range(n_tensors):
                name = cur.string()
                n_dims = cur.take("<I")
                if not 1 <= n_dims <= _MAX_DIMS:
                    raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions")
                dims = tuple(cur.take("<Q") for _ in range(n_dims))
                kind, offset = cur.take("<IQ")
                tensors[name] = (dims, kind, offset)
        except _Corrupt as exc:
            raise ValueError(f"{path}: starts like a GGUF file but {exc}: truncated or corrupt; "
                             "download or convert it again") from None
        align = meta.get("general.alignment", 32)
        data_start = -(-cur.pos // align) * align if isinstance(align, int) and align > 0 else cur.pos
        end = data_start
        for name, (dims, kind, offset) in tensors.items():
            try:
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise ValueError(f"{path}: tensor {name!r} has unknown ggml type {kind}: corrupt, or written by a "
                                 "newer llama.cpp than the installed gguf package reads") from None
            end = max(end, data_start + offset + math.ceil(math.prod(dims) / block) * type_size)
        if end > len(buf):
            raise ValueError(f"{path}: truncated: its tensors need {end} bytes, the file has {len(buf)}; "
                             "download or convert it again")
    return meta, {name: (dims, kind) for name, (dims, kind, _) in tensors.items()}


def check_gguf_model(path: str | Path, tokenizer: bool) -> dict:
    """:func:`read_gguf_header`, plus: an architecture, at least one tensor, and a tokenizer
    (``tokenizer.ggml.*``) when ``tokenizer``. Returns the metadata."""
    meta, tensors = read_gguf_header(path)
    if "general.architecture" not in meta or not tensors:
        raise ValueError(f"{path}: a GGUF file without {'an architecture' if tensors else 'tensors'}: "
                         "not a model; convert the model again")
    if tokenizer and "tokenizer.ggml.model" not in meta:
        raise ValueError(f"{path}: has no tokenizer (no tokenizer.ggml.* metadata): give a GGUF file with one, "
                         "or a Hugging Face folder with tokenizer files")
    return meta
