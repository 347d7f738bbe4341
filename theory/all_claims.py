"""Imports every claim module so that each registers its claims (order = table order)."""
# Each import registers claims through theory.claims.claim; add new claim modules here.
