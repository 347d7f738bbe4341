"""Imports every claim module so that each registers its claims (order = table order)."""
# ruff: noqa: F401
# --- recall-model claims (P1, T2) ---
from theory import p1, p1_lora, t2  # P1, P1-LORA, T2
# --- rank, expressiveness and merge claims (RANK-1, RANK-2, MERGE-*) ---
from theory import rank  # RANK-1 (first: table order)
from theory import rank2  # RANK-2 (constructions: expressive.py, expressive_tfn.py)
from theory import merge_claims  # MERGE-1 .. MERGE-6
