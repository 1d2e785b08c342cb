"""Regenerate the MLflow screenshots of docs/workflow.md (``make screenshots``).

    python tests/ui_screenshots.py [--store URI] [--name PREFIX] [--out docs/img]

``--store``: an MLflow store the workflow wrote (the demo's: ``sqlite:///results/demo/
mlflow.db``, after its ``tables`` stage); without it, the tiny grid of
tests/test_mlflow_benchmark.py is run into a temporary folder first (~2 min). Serves the store
with ``mlflow server``, opens the preset view (``benchmark_tracking.view_url``: machine-learning
mode) and the registered model of the method's chosen run in headless Chromium at 1600 px, and
writes ``{PREFIX}_runs.png`` and ``{PREFIX}_chosen_model.png``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_mlflow_benchmark import MlflowServer, _run_grid, chromium


def screenshot(browser: str, url: str, out: Path, width: int = 1600, height: int = 900) -> None:
    """One PNG of ``url`` after its scripts ran (virtual-time budget)."""
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--hide-scrollbars", f"--window-size={width},{height}", "--virtual-time-budget=30000",
         f"--screenshot={out}", url], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium --screenshot {url} failed: {proc.stderr[-1500:]}")
    print(out)


def main(argv: list[str] | None = None) -> int:
    from mlflow import MlflowClient

    from subspace_fsl.benchmark_tracking import CHOSEN_ALIAS, view_url

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="MLflow store URI (default: run the tiny grid)")
    parser.add_argument("--name", default="mlflow", help="file name prefix (default mlflow)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs/img"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            from subspace_fsl.config import load_config
            from subspace_fsl.tracking import tracking_uri

            store = tracking_uri(load_config(_run_grid(Path(tmp))))
        client = MlflowClient(store)
        experiment = next(e for e in client.search_experiments() if e.name != "Default")
        models = [m for m in client.search_registered_models()
                  if m.aliases and CHOSEN_ALIAS in m.aliases]
        browser, out = chromium(), Path(args.out)
        with MlflowServer(store) as server:
            screenshot(browser, view_url(experiment.experiment_id, server.base),
                       out / f"{args.name}_runs.png")
            if models:
                screenshot(browser, f"{server.base}/#/models/{models[0].name}",
                           out / f"{args.name}_chosen_model.png", height=700)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
