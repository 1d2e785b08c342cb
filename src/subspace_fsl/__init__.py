"""subspace-fsl: few-shot sub-category classification with multiple feature subspaces.

The method is the one of patent CN 115861720 B (see ``docs/method.md``): S linear feature
subspaces on a CNN backbone, an SVD class subspace per class in each feature subspace,
classification by the summed projection distance, plus a feature-subspace diversity loss (L1)
and a class-subspace discrimination loss (L2).
"""

__version__ = "0.1.0"
