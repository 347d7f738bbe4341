"""The one-layer factual-recall model of PAPER.md section 1 (the key-value view of
Geva et al. 2021 and Nichani, Lee, Bietti 2024), and LoRA edits of its output matrix ``W``.

Model
-----
Entities and relations have embeddings ``e_x, e_r`` in R^d (rows of ``E`` and ``R``). A
prompt is read at its last position:

- one-hop "X REL":      ``h = V e_X + M_2 e_REL``
- two-hop "X R1 R2":    ``h = V e_X + M_1 e_R1 + M_2 e_R2``

Attention copies the subject through the value map ``V``; the LAST token (the relation
asked about) enters through ``M_2`` in both prompt kinds (the last position's own residual
stream), an earlier relation token through ``M_1``. The readout is a setting
(:data:`READOUTS`):

- ``additive`` (PAPER.md's readout, the default): ``M_1 = M_2 = I``, so every relation
  token reaches the last position unchanged. It extends the one-hop readout token by token,
  but it also makes the two-hop key CONTAIN the one-hop key of its first hop
  (``V e_x + e_r1``): adapter 1's key overlaps the true prompt by construction (T2's
  "true <= control" is partly structural, see theory/t2_readout.py).
- ``random_maps``: ``V, M_1, M_2`` independent Gaussian maps (entries ``N(0, 1/d)``): x, r1
  and r2 enter through independent random maps, so a two-hop key shares with adapter 1's
  key only the subject part and with adapter 2's key only the last relation's part.

Either way the key holds everything the prompt mentions and nothing else; in particular no
trace of the bridge entity ``y~`` that the two-hop question needs (T2).

``key = ReLU(U h) - mu`` with ``U: (m, d)``; logits ``W key`` with ``W: (|E|, m)`` read in
the entity basis. ``W = D K^+`` (minimum-norm exact solution of ``W K = D`` for the stored
keys ``K: (m, N)`` and one-hot answers ``D: (|E|, N)``), exact when the N keys are
linearly independent, which needs ``N <= m``.

Key regimes
-----------
- ``raw``: ``mu = 0``. Keys are non-negative, so any two share a large common component
  (for independent Gaussian inputs the cosine of two ReLU keys is about 1/pi).
- ``centred``: ``mu = E[ReLU(U h)]`` for one-hop prompts under the embedding prior
  (``e ~ N(0, I/d)``), in closed form ``mu_i = sqrt((||V^T u_i||^2 + ||M_2^T u_i||^2) / d) / sqrt(2 pi)``. Fixed (a bias
  of the MLP), not fitted to the stored facts, so the centred keys of all pairs stay
  linearly independent. HYPOTHESIS (PAPER.md T2): centred keys of random embeddings are
  near-orthogonal. MEASURED FALSE here (``T2.centred.shared_relation``): a two-hop key and
  ``v2`` both contain ``e_r2`` in ``h`` (cos(h2, h') ~0.4), and one global offset cannot
  remove that; mean cos(v2, v') ~0.33 against |cos| 0.07 for random directions in R^128.
- ``relation``: ``mu = E_e[ReLU(U (V e + sum_r e_r))]``, the exact mean key over the
  subject's prior for the prompt's own relation set (:meth:`RecallModel.relation_mean`,
  closed form). By construction a key has mean 0 over its subject, and the keys of two
  prompts with independent subjects (v' and v2) have ``E<v2, v'> = 0`` exactly: the
  zero-overlap hypothesis of T2 made true. It does NOT make keys as orthogonal as random
  directions in R^m: a key is a function of a d-dimensional input, so mean |cos| stays
  of order 1/sqrt(d) (measured by ``T2.relation.above_random_directions``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from theory.merge import Factors

KEY_REGIMES = ("centred", "raw")  # one fixed offset mu per model (P1 runs these)
RELATION_CENTRED = "relation"  # offset per relation set (T2's near-orthogonal construction)
READOUTS = ("additive", "random_maps")  # how the prompt's tokens reach the last position


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r}: must be a positive integer")


@dataclass(frozen=True)
class RecallConfig:
    """Sizes of the recall model (paper notation in the comments)."""

    d_model: int = 32  # d: embedding width
    d_mlp: int = 128  # m: number of key units
    n_entities: int = 24  # |E|
    n_relations: int = 4  # |R|
    n_facts: int | None = None  # N stored facts; None = every (x, r) pair
    keys: str = "centred"  # one of KEY_REGIMES or RELATION_CENTRED
    readout: str = "additive"  # one of READOUTS

    def __post_init__(self):
        for name in ("d_model", "d_mlp", "n_entities", "n_relations"):
            _positive_int(name, getattr(self, name))
        if self.n_entities < 4:
            raise ValueError(f"n_entities={self.n_entities}: must be >= 4 (x, y~, z~ and one more)")
        pairs = self.n_entities * self.n_relations
        if self.n_facts is not None:
            _positive_int("n_facts", self.n_facts)
            if self.n_facts > pairs:
                raise ValueError(f"n_facts={self.n_facts}: must be <= n_entities * n_relations = {pairs}")
        if self.N > self.d_mlp:
            raise ValueError(f"n_facts={self.N}: exact storage needs linearly independent keys, "
                             f"so n_facts must be <= d_mlp = {self.d_mlp}")
        if self.keys not in (*KEY_REGIMES, RELATION_CENTRED):
            raise ValueError(f"keys={self.keys!r}: must be one of {', '.join((*KEY_REGIMES, RELATION_CENTRED))}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout={self.readout!r}: must be one of {', '.join(READOUTS)}")

    @property
    def N(self) -> int:
        return self.n_entities * self.n_relations if self.n_facts is None else self.n_facts


@dataclass(frozen=True)
class RecallModel:
    """A built recall model, or a batch of ``n`` independent ones: then every tensor below
    has a leading instance axis ``(n, ...)`` and indices carry it too. ``facts[k] = (x, r)``
    is stored with answer ``answers[k]``; ``table[x, r]`` is that answer (-1: not stored)."""

    config: RecallConfig
    E: Tensor  # (|E|, d) entity embeddings e_x as rows
    R: Tensor  # (|R|, d) relation embeddings e_r as rows
    V: Tensor  # (d, d) attention value map (the subject's map)
    M: Tensor  # (2, d, d) relation maps M_1 (earlier relation), M_2 (last token); I, I if additive
    U: Tensor  # (m, d) key weights
    mu: Tensor  # (m,) key offset: 0 (raw) or the prior mean key (centred)
    W: Tensor  # (|E|, m) output matrix, the one LoRA edits
    facts: Tensor  # (N, 2) long: (x, r)
    answers: Tensor  # (N,) long: r(x)
    table: Tensor  # (|E|, |R|) long: r(x), -1 where not stored

    @property
    def batch(self) -> int | None:
        """Number of instances, or None for a single model."""
        return self.E.shape[0] if self.E.ndim == 3 else None

    def instance(self, i: int) -> "RecallModel":
        """Instance ``i`` of a batch as a single model."""
        fields = {k: getattr(self, k)[i] for k in ("E", "R", "V", "M", "U", "mu", "W", "facts", "answers", "table")}
        return RecallModel(self.config, **fields)

    def _gather(self, table: Tensor, idx: Tensor) -> Tensor:
        """``table[idx]`` per instance: ``idx (*B, P)`` -> ``(*B, P, ...)``."""
        if self.batch is None:
            return table[idx]
        return table[torch.arange(self.batch).view(-1, *[1] * (idx.ndim - 1)), idx]

    def _hidden(self, x, relations) -> tuple[Tensor, Tensor, bool]:
        """``h (*B, P, d)``, the relations' part ``sum_r e_r (*B, P, d)`` and whether the
        prompt axis was added (one prompt per instance)."""
        if not relations:
            raise ValueError("relations: give one relation (one-hop prompt) or two (two-hop prompt)")
        x, *rels = torch.broadcast_tensors(*(torch.as_tensor(i) for i in (x, *relations)))
        vector = x.ndim == (0 if self.batch is None else 1)
        if len(rels) > 2:
            raise ValueError(f"relations: {len(rels)} given; the readout reads one-hop and two-hop prompts only")
        x, rels = (x[..., None], [r[..., None] for r in rels]) if vector else (x, rels)  # (*B, P)
        rel = [self._gather(self.R, r) for r in rels]  # (*B, P, d) each
        if self.config.readout != "additive":  # the last relation through M_2, an earlier one through M_1
            rel = [e @ M.mT for e, M in zip(rel, self.M.unbind(-3)[2 - len(rels):])]
        rel = sum(rel)  # (*B, P, d)
        return self._gather(self.E, x) @ self.V.mT + rel, rel, vector

    def hidden(self, x, *relations) -> Tensor:
        """``h = V e_x + [M_1 e_r1 +] M_2 e_r``: ``(*B, d)`` for one prompt per instance, else ``(*B, P, d)``
        (rows: h is an input, not a key)."""
        h, _, vector = self._hidden(x, relations)
        return h[..., 0, :] if vector else h

    def relation_part(self, x, *relations) -> Tensor:
        """``[M_1 e_r1 +] M_2 e_r``, the relations' part of :meth:`hidden` (same shapes)."""
        _, rel, vector = self._hidden(x, relations)
        return rel[..., 0, :] if vector else rel

    def key(self, x, *relations) -> Tensor:
        """``ReLU(U h) - mu`` (one relation: one-hop prompt, two: two-hop). Indices are ints
        (single model) or ``(n,)`` tensors (batch): one key vector per instance, ``(m,)`` /
        ``(n, m)``. With a prompt axis, ``(P,)`` / ``(n, P)``, keys are COLUMNS: ``(m, P)`` /
        ``(n, m, P)``."""
        h, rel, vector = self._hidden(x, relations)  # (*B, P, d)
        mu = self.relation_mean(rel) if self.config.keys == RELATION_CENTRED else self.mu.unsqueeze(-2)
        k = torch.relu(h @ self.U.mT) - mu  # (*B, P, m)
        return k[..., 0, :] if vector else k.mT  # (*B, m) or (*B, m, P)

    def relation_mean(self, rel: Tensor) -> Tensor:
        """``E_e[ReLU(U (V e + rel))]`` over the subject's prior ``e ~ N(0, I/d)``, for the
        relations' part ``rel (*B, P, d)`` of prompts: ``(*B, P, m)``. Unit i's input is
        ``N(mean, s^2)`` with ``mean = u_i . rel``, ``s^2 = ||V^T u_i||^2 / d``, and
        ``E[ReLU(N(mean, s^2))] = mean Phi(mean/s) + s phi(mean/s)``."""
        s = ((self.U @ self.V).norm(dim=-1) / math.sqrt(self.config.d_model)).unsqueeze(-2)  # (*B, 1, m)
        mean = rel @ self.U.mT  # (*B, P, m)
        z = mean / s
        return mean * torch.special.ndtr(z) + s * torch.exp(-z.square() / 2) / math.sqrt(2 * math.pi)

    def logits(self, key: Tensor, delta: Tensor | None = None) -> Tensor:
        """``(W + delta) key`` for a key vector ``(*B, m)`` -> ``(*B, |E|)`` or key columns
        ``(*B, m, P)`` -> ``(*B, |E|, P)``."""
        W = self.W if delta is None else self.W + delta
        if key.ndim == W.ndim - 1:
            return (W @ key[..., None])[..., 0]
        return W @ key

    def answer(self, x, r) -> Tensor:
        """Stored answers ``r(x)`` (-1 where not stored), same shape as the indices."""
        x, r = torch.broadcast_tensors(torch.as_tensor(x), torch.as_tensor(r))
        if self.batch is None:
            return self.table[x, r]
        return self._gather(self.table, x).gather(-1, r[..., None])[..., 0]  # (*B, |R|) -> (*B,)

    @property
    def stored_keys(self) -> Tensor:
        return self.key(self.facts[..., 0], self.facts[..., 1])  # (*B, m, N)

    @property
    def storage_error(self) -> float:
        """``max |W K - D|``: 0 up to float error when all N facts are stored exactly."""
        D = one_hot(self.answers, self.config.n_entities).mT  # (*B, |E|, N)
        return float((self.W @ self.stored_keys - D).abs().max())


def one_hot(index: Tensor | int, n: int, dtype=torch.float64) -> Tensor:
    """``i_index`` in R^n (with the index's shape in front for a tensor index)."""
    return torch.nn.functional.one_hot(torch.as_tensor(index), n).to(dtype)


def centred_offset(U: Tensor, V: Tensor, M2: Tensor) -> Tensor:
    """``mu = E[ReLU(U h)]`` over one-hop prompts ``h = V e_x + M_2 e_r`` under the prior
    ``e ~ N(0, I/d)``: ``u.h ~ N(0, (||V^T u||^2 + ||M_2^T u||^2) / d)`` and
    ``E[ReLU(N(0, s^2))] = s / sqrt(2 pi)``. ``U (*B, m, d)`` -> ``(*B, m)`` (the relation
    regime's offset depends on the prompt instead, see :meth:`RecallModel.relation_mean`)."""
    s = ((U @ V).square().sum(-1) + (U @ M2).square().sum(-1)).div(V.shape[-1]).sqrt()  # (*B, m)
    return s / math.sqrt(2 * math.pi)


def build_recall_model(config: RecallConfig, generator: torch.Generator, batch: int | None = None) -> RecallModel:
    """Random embeddings (``N(0, I/d)``), ``V ~ N(0, I/d)``, ``U ~ N(0, 1)``, relation maps
    (identity, or ``M_1, M_2 ~ N(0, I/d)`` for ``random_maps``), N random distinct facts with
    uniform random answers, and the exact minimum-norm ``W`` (float64). ``batch=n`` builds n
    independent models at once (leading instance axis)."""
    c, g, f64 = config, generator, torch.float64
    d, B = c.d_model, (() if batch is None else (batch,))
    if batch is not None:
        _positive_int("batch", batch)
    E = torch.randn(*B, c.n_entities, d, generator=g, dtype=f64) / math.sqrt(d)
    R = torch.randn(*B, c.n_relations, d, generator=g, dtype=f64) / math.sqrt(d)
    V = torch.randn(*B, d, d, generator=g, dtype=f64) / math.sqrt(d)
    U = torch.randn(*B, c.d_mlp, d, generator=g, dtype=f64)
    if c.readout == "additive":  # no draw: the additive models are the same as before the setting existed
        M = torch.eye(d, dtype=f64).expand(*B, 2, d, d)
    else:
        M = torch.randn(*B, 2, d, d, generator=g, dtype=f64) / math.sqrt(d)
    mu = centred_offset(U, V, M[..., 1, :, :]) if c.keys == "centred" else torch.zeros(*B, c.d_mlp, dtype=f64)
    pairs = torch.rand(*B, c.n_entities * c.n_relations, generator=g).argsort(-1)[..., : c.N]  # (*B, N)
    facts = torch.stack([pairs // c.n_relations, pairs % c.n_relations], dim=-1)  # (*B, N, 2)
    answers = torch.randint(c.n_entities, (*B, c.N), generator=g)
    table = torch.full((*B, c.n_entities * c.n_relations), -1, dtype=torch.long)
    table = table.scatter(-1, pairs, answers).view(*B, c.n_entities, c.n_relations)
    model = RecallModel(c, E, R, V, M, U, mu, torch.zeros(*B, c.n_entities, c.d_mlp, dtype=f64), facts, answers, table)
    K = model.stored_keys  # (*B, m, N)
    D = one_hot(answers, c.n_entities).mT  # (*B, |E|, N)
    # Minimum-norm exact solution of W K = D: W = D K^+ with K^+ = (K^T K)^{-1} K^T for
    # full-column-rank K (storage_error exposes a failure), computed as W^T = K (K^T K)^{-1} D^T:
    # |E| right-hand sides instead of m (4x faster). numpy's batched solve: torch's was 40x
    # slower on a shared 2-core machine (one LAPACK call per instance).
    X = torch.from_numpy(np.linalg.solve((K.mT @ K).numpy(), D.mT.numpy()))  # (*B, N, |E|)
    W = (K @ X).mT  # (*B, m, N) @ (*B, N, |E|) -> (*B, m, |E|) -> (*B, |E|, m)
    return RecallModel(c, E, R, V, M, U, mu, W, facts, answers, table)


def rank_one_edit(model: RecallModel, key: Tensor, new) -> Factors | list[Factors]:
    """P1 closed form as a rank-one LoRA: ``DW = delta v^T / ||v||^2`` with ``v = key`` and
    ``delta = i_new - W v`` (= ``i_new - i_old`` for a stored fact); ``A = v^T/||v||^2``
    ``(1, m)``, ``B = delta`` ``(|E|, 1)``, scale 1. A batch gives one Factors per instance."""
    new = torch.as_tensor(new)
    if new.min() < 0 or new.max() >= model.config.n_entities:
        raise ValueError(f"new={new.tolist()}: must be entity indices in [0, {model.config.n_entities})")
    delta = one_hot(new, model.config.n_entities) - model.logits(key)  # (*B, |E|)
    A = key / key.square().sum(-1, keepdim=True)  # (*B, m)
    if model.batch is None:
        return Factors(A=A[None, :], B=delta[:, None], scale=1.0)
    return [Factors(A=a[None, :], B=b[:, None], scale=1.0) for a, b in zip(A, delta)]


def margin(logits: Tensor, target) -> Tensor:
    """``logit[target] - max_{j != target} logit[j]`` over the LAST axis: ``logits (..., |E|)``,
    ``target`` an int or indices broadcastable to ``(...)``. ``> 0``: the model answers target.
    (For key columns pass ``logits.mT``.)"""
    target = torch.as_tensor(target).expand(logits.shape[:-1])[..., None]  # (..., 1)
    own = logits.gather(-1, target)[..., 0]  # (...)
    others = logits.scatter(-1, target, float("-inf")).amax(dim=-1)  # (...)
    return own - others
