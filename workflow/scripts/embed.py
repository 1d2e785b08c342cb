"""Rule embed: every cached image through the pre-trained backbone once, into the feature
file of train.backbone: frozen (engine.features.build_features)."""
from subspace_fsl.engine.features import build_features
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    build_features(cfg, snakemake.output[0], cache_dir=snakemake.input.cache,
                   split_file=snakemake.input.split, backbone_file=snakemake.input.backbone,
                   flipped=snakemake.params.flipped)
