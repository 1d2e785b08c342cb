"""Interpretability: exact per-subspace evidence maps, part ground truth, the specialization
measure and the explain step (docs/explain.md)."""
