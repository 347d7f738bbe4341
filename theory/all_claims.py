"""Imports every claim module so that each registers its claims (order = table order)."""
# ruff: noqa: F401
# --- recall-model claims (P1, T2) ---
# --- rank, expressiveness and merge claims (RANK-1, RANK-2, MERGE-*) ---
