"""The one rule by which every random draw of a run is seeded.

A run has one integer ``seed``. Every consumer of randomness (the base model's corpus, its
init, a split's expert data, each LoRA's init and batch order, a merge's DARE mask, LoraHub's
search) draws from its own stream, named by a *path* of words, e.g. ``("base", "corpus")`` or
``("lora", "F", "AB")``::

    stream(seed, *path) = numpy.random.SeedSequence(seed, spawn_key=(word(p) for p in path))

``word`` keeps integers as they are and maps a string to the first 4 bytes of its SHA-256
(stable across processes and Python versions, unlike ``hash``). Streams of different paths are
independent, so adding an expert, a split or a method changes no other stream's draws, and K
adapters trained side by side (``toymodels.stacked``) draw exactly what K sequential runs draw.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

Word = str | int


def word(part: Word) -> int:
    """A path element as a spawn-key integer (>= 0)."""
    if isinstance(part, bool) or not isinstance(part, (str, int)):
        raise TypeError(f"seed path element {part!r}: must be a str or an int")
    if isinstance(part, int):
        if part < 0:
            raise ValueError(f"seed path element {part}: must be >= 0")
        return part
    return int.from_bytes(hashlib.sha256(part.encode()).digest()[:4], "little")


def stream(seed: int, *path: Word) -> np.random.SeedSequence:
    """The seed sequence of ``path`` under the run seed ``seed`` (>= 0)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be an integer >= 0")
    return np.random.SeedSequence(seed, spawn_key=tuple(word(p) for p in path))


def numpy_rng(seed: int, *path: Word) -> np.random.Generator:
    """A NumPy generator on the stream ``path``."""
    return np.random.default_rng(stream(seed, *path))


def torch_gen(seed: int, *path: Word) -> torch.Generator:
    """A CPU torch generator on the stream ``path`` (63 bits of the stream's state)."""
    state = int(stream(seed, *path).generate_state(1, np.uint64)[0]) & ((1 << 63) - 1)
    return torch.Generator().manual_seed(state)


def generators(seed: int, *path: Word) -> tuple[np.random.Generator, torch.Generator]:
    """``(numpy_rng, torch_gen)`` of ``path``: two different streams (``path + ("numpy",)`` and
    ``path + ("torch",)``), so neither's draws depend on how many the other made."""
    return numpy_rng(seed, *path, "numpy"), torch_gen(seed, *path, "torch")
