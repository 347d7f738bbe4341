"""Shared test settings and the tiny GPT that the LoRA, adapter, reuse and probe tests share."""
import torch

# The tests use tiny tensors, where thread start-up dominates: one thread is faster and
# keeps the suite steady on a shared 2-core machine.
torch.set_num_threads(1)


def seeded(seed: int = 0) -> torch.Generator:
    """A fresh torch generator: every random draw in a test names its seed."""
    return torch.Generator().manual_seed(seed)


def __getattr__(name: str):
    """``TINY_GPT`` is built on first use, not when pytest imports this file: mutation testing
    (`make mutation`) makes every mutated function raise in its set-up check, and a config
    built here would then fail pytest's start-up instead of failing the tests."""
    if name == "TINY_GPT":
        from toymodels.model import ModelConfig

        return ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, d_vocab=11, n_ctx=6)
    raise AttributeError(name)
