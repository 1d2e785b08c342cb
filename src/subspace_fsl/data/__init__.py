"""Data: raw sources (CUB-200-2011, FGVC-Aircraft, Stanford Dogs, Flowers-102, Stanford Cars,
synthetic, a folder of class sub-folders) -> uint8 image cache -> class splits -> episodes ->
normalised tensors. See docs/data.md.

Modules: ``download`` (fetch, verify, record, safe extract: shared by every source),
``sources`` (the registry keyed by ``dataset.source``: reader, layout, published files),
``records`` (the reader table every reader produces), ``cub`` / ``aircraft`` / ``dogs`` /
``flowers`` / ``cars`` / ``folder`` (one reader each; ``matfile`` reads their ``.mat`` lists),
``synth`` (generator), ``images`` (decode one file), ``cache`` (build / open / ``prepare(cfg)``),
``splits`` (base / val / novel classes: rules and class lists), ``episodes`` (sampler, plan,
loader).
"""
