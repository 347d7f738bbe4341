"""Linear probes (Alain & Bengio 2016): per layer, a multinomial logistic regression from
the residual stream at the read position to a label (e.g. the bridge entity of
"A r1 r2"), fit on a train split of the prompts and scored on the rest.

Each fit is deterministic: features are standardised with the train split's mean and
standard deviation, the weights start at zero, and the objective
``mean cross-entropy + weight_decay * ||W||_F^2`` (bias not decayed) is strictly convex,
so full-batch L-BFGS goes to its unique minimum; randomness enters only through the split.
Accuracy is compared with the majority-class baseline (the train split's most frequent
label, scored on the test split), which is the chance level of an uninformative probe.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toymodels.probes.capture import Position, residual_stream


def split_indices(n: int, train_frac: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random ``(train, test)`` split of ``range(n)``, both non-empty."""
    n_train = round(train_frac * n)
    if not 1 <= n_train < n:
        raise ValueError(f"train_frac={train_frac} of n={n} rows gives {n_train} train rows: need 1..{n - 1}")
    perm = torch.randperm(n, generator=generator)
    return perm[:n_train], perm[n_train:]


def fit_probe(X: Tensor, y: Tensor, n_classes: int, weight_decay: float = 1e-3,
              steps: int = 200) -> nn.Linear:
    """Logistic regression ``(N, d) -> (N,)`` class indices, on standardised ``X``; returns the
    probe as one ``nn.Linear(d, n_classes)`` with the standardisation folded in (float64)."""
    X = X.double()
    mean, std = X.mean(0), X.std(0).clamp_min(1e-8)  # (d,), (d,)
    Z = (X - mean) / std  # (N, d)
    W = torch.zeros(n_classes, X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=steps, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(Z @ W.T + b, y) + weight_decay * W.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    probe = nn.Linear(X.shape[1], n_classes, dtype=torch.float64)
    with torch.no_grad():  # W (Z) + b = (W / std) X + (b - W mean / std)
        probe.weight.copy_(W / std)
        probe.bias.copy_(b - (W / std) @ mean)
    return probe.requires_grad_(False)


def probe_layers(features: Tensor, labels: Tensor, train: Tensor, test: Tensor,
                 weight_decay: float = 1e-3, steps: int = 200) -> dict:
    """One probe per layer. ``features: (L, N, d)``, ``labels: (N,)`` (any integer ids, e.g.
    token ids), ``train``/``test`` row indices. A test label never seen in training counts
    as an error. Returns ``train_acc (L,)``, ``test_acc (L,)``, ``chance`` (majority
    baseline on the test split), ``uniform`` (1 / number of train classes), ``n_classes``."""
    classes, y = torch.unique(labels, return_inverse=True)  # y: (N,) class index
    y_train, y_test = y[train], y[test]
    train_acc, test_acc = [], []
    for X in features:  # (N, d)
        probe = fit_probe(X[train], y_train, len(classes), weight_decay, steps)
        train_acc.append((probe(X[train].double()).argmax(-1) == y_train).double().mean())
        test_acc.append((probe(X[test].double()).argmax(-1) == y_test).double().mean())
    majority = torch.bincount(y_train, minlength=len(classes)).argmax()
    return {"train_acc": torch.stack(train_acc), "test_acc": torch.stack(test_acc),
            "chance": (y_test == majority).double().mean().item(),
            "uniform": 1.0 / len(torch.unique(y_train)), "n_classes": len(classes)}


def linear_probe(model: nn.Module, idx: Tensor, position: Position, labels: Tensor,
                 generator: torch.Generator, train_frac: float = 0.5, weight_decay: float = 1e-3,
                 steps: int = 200) -> dict:
    """:func:`probe_layers` on the residual stream of ``model`` (base, merged, routed: any
    GPT-built model) at ``position``, layer ``l`` = the stream entering block ``l``, the
    last = the stream entering ``ln_final``; the split is drawn from ``generator``."""
    features = residual_stream(model, idx, position)  # (n_layers + 1, B, d_model)
    train, test = split_indices(idx.shape[0], train_frac, generator)
    return probe_layers(features, labels, train, test, weight_decay, steps)
