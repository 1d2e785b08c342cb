"""Training and evaluation engine: episodic meta-training, evaluation, prediction.

- ``engine.train.train(cfg, out_dir)``: meta-train one configuration (resumes, exact);
- ``engine.evaluate.evaluate(cfg, checkpoint, split_name, out_dir)``: fixed-episode accuracy;
- ``engine.predict.predict(checkpoint, support_dir, images)``: classify new images;
- ``engine.checkpoint``: safe (weights-only) atomic checkpoints and RNG states.

Submodules are imported on use so that ``subspace-fsl --help`` stays fast.
"""
