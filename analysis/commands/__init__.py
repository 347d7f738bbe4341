"""One module per CLI verb (see analysis/cli.py), and the options the sweep verbs share."""
from __future__ import annotations

import argparse

PROFILE_HELP = ("quick (default: sized for 2 CPU cores) or paper (5 seeds, every method, more depths: the "
                "toy experiments took 3.3 h on 2 CPU cores, measured 2026-12-03; a GPU is the place for it)")


def add_profile_and_device(parser: argparse.ArgumentParser) -> None:
    """``--profile`` and ``--device``, as ``run`` and ``reproduce`` take them."""
    parser.add_argument("--profile", default="quick", metavar="P", help=PROFILE_HELP)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to train (default auto: CUDA when present)")


BUNDLED_BASE = "smollm2"  # what --base names the bundled SmolLM2 GGUF by


def load_base(source: str, cache: str, shapes_only: bool = False):
    """``--base SOURCE`` of ``inspect`` and ``diagnose``: ``(model, tokenizer)`` loaded by
    :func:`toymodels.pretrained.load_causal_lm`; with ``shapes_only`` the module tree alone
    (no tokenizer, no finite check, and for an HF folder its meta-device skeleton, no weights),
    tokenizer None. A missing pretrained extra is a usage error naming the install."""
    from pathlib import Path

    from analysis.errors import UsageError
    from toymodels.pretrained import check_source, load_causal_lm

    model = None if source == BUNDLED_BASE else source
    try:
        if not shapes_only:
            return load_causal_lm(model, Path(cache))
        _, skeleton = check_source(model, tokenizer=False)
        if skeleton is not None:
            return skeleton, None
        return load_causal_lm(model, Path(cache), tokenizer=False, check_finite=False)
    except ImportError as exc:  # the pretrained extra is missing: say how to install it
        raise UsageError(str(exc)) from None
