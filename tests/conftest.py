"""Shared test settings: small, deterministic, and polite to a 2-core machine."""

import os

import torch

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
torch.set_num_threads(1)
