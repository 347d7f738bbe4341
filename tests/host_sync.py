"""A CPU stand-in for CUDA's sync debug mode: count the calls by which our code makes the host
wait for a device result, so that a test can check that a step loop makes none per step.

Counted: ``Tensor.item/tolist/numpy/cpu/nonzero``, ``bool()/float()/int()`` of a tensor, and
indexing with a boolean tensor (a data-dependent shape: CUDA computes ``nonzero`` and copies
its size to the host), when called from code outside the ``torch`` package. Calls that torch
makes itself are not counted (e.g. AdamW's ``.item()`` on its CPU step counter, which is no
device sync); ``torch.cuda.set_sync_debug_mode`` on a GPU sees those (the ``gpu`` tests).
"""
from __future__ import annotations

import collections
import os
import sys
from contextlib import contextmanager

import torch

METHODS = ("item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__float__", "__int__")
TORCH_DIR = os.path.dirname(torch.__file__)


def _caller() -> str | None:
    frame = sys._getframe(2)
    name = frame.f_code.co_filename
    return None if name.startswith(TORCH_DIR) else f"{os.path.basename(name)}:{frame.f_lineno}"


def _has_bool_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


@contextmanager
def host_reads(monkeypatch):
    """Yields a Counter ``"method at file:line" -> calls``, filled while the block runs."""
    calls: collections.Counter = collections.Counter()

    def counting(name, original):
        def method(self, *args, **kwargs):
            if (where := _caller()) is not None:
                calls[f"{name} at {where}"] += 1
            return original(self, *args, **kwargs)
        return method

    def getitem(original):
        def method(self, index):
            if _has_bool_index(index) and (where := _caller()) is not None:
                calls[f"bool-mask index at {where}"] += 1
            return original(self, index)
        return method

    with monkeypatch.context() as patch:
        for name in METHODS:
            patch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        patch.setattr(torch.Tensor, "__getitem__", getitem(torch.Tensor.__getitem__))
        yield calls
