"""Data: raw sources (CUB-200-2011, synthetic, a folder of class sub-folders) -> uint8 image
cache -> class splits -> episodes -> normalised tensors. See docs/data.md.

Modules: ``cub`` (download, extract, parse), ``synth`` (generator), ``folder`` (users' own
images), ``images`` (decode one file), ``cache`` (build / open / ``prepare(cfg)``), ``splits``
(base / val / novel classes), ``episodes`` (sampler, plan, loader).
"""
