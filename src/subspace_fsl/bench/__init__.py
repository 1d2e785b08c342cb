"""Benchmarks that print their figures (ratios against a baseline measured in the same run).

``python -m subspace_fsl.bench <name> [options]`` runs ``subspace_fsl.bench.<name>.main``.
They are not timed tests: a busy machine changes the seconds, not the conclusion.
"""
