"""The paper's claims as code: the one-layer factual-recall model, rank-one fact edits,
merged and routed adapters on two-hop prompts, rank/expressiveness limits, merge algebra.

Notation contract (every module in lora-limits obeys it)
---------------------------------------------------------
- A linear map is ``y = x @ W.T + b`` with ``W: (d_out, d_in)`` (torch's convention).
  Checkpoint-specific layouts (e.g. GPT-2 Conv1D) are transposed once, at load time.
- LoRA: ``A: (r, d_in)``, ``B: (d_out, r)``, ``delta = scale * B @ A`` with
  ``scale = alpha / r`` (``alpha / sqrt(r)`` for rsLoRA). Default init ``B = 0`` and ``A``
  random, so ``delta = 0`` at init (pinned by ``tests/test_lora.py``).
- Weights are named like the math: ``W_Q, W_K, W_V, W_O, W_in, W_out, W_E, W_U``; sizes
  ``d_model, d_mlp, d_head, n_layers, n_heads, n_ctx, d_vocab``.
- One-layer recall model (PAPER.md section 1): entity/relation embeddings ``e_x, e_r`` in
  R^d, ``h = V e_X + e_REL`` (a setting: relation tokens through independent random maps
  instead, theory/recall.py), ``key = ReLU(U h)`` with ``U: (m, d)``, logits ``W key`` with
  ``W: (|E|, m)``; LoRA edits ``W``. Vectors are 1-D; key matrices stack keys as COLUMNS
  (``K: (m, N)``) so that ``DW @ K`` maps keys to logit changes.
- Claims carry stable IDs (``P1``, ``P1-LORA``, ``T2``, ``RANK-1``, ``RANK-2``, ``MERGE-1``
  ...). Each ID's docstring gives the source and the statement in this notation.

This package is pure: it never prints, writes files, reads environment variables or
seeds global RNGs. Randomness comes in as an explicit ``numpy.random.Generator`` or
``torch.Generator``.
"""
