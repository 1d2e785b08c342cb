"""Regenerate the MLflow and report screenshots of docs/workflow.md (``make screenshots``).

    python tests/ui_screenshots.py [--store URI] [--name PREFIX] [--out docs/img]
                                   [--report results/demo/report.html] [--width 3000]

``--store``: an MLflow store the workflow wrote (the demo's: ``sqlite:///results/demo/
mlflow.db``, after its ``tables`` stage); without it, the tiny grid of
tests/test_mlflow_benchmark.py is run into a temporary folder first (~2 min). Serves the store
with ``mlflow server`` and opens in headless Chromium, machine-learning mode: the preset view
(``benchmark_tracking.view_url``, ``--width`` px wide: every varying setting is a column;
MLflow 3.17's Assistant panel, open by default, is cut off the right), the parent run's metrics,
the registered model of the method's chosen run and its logged model; writes
``{PREFIX}_runs.png``, ``{PREFIX}_parent.png``, ``{PREFIX}_chosen_model.png``,
``{PREFIX}_logged_model.png``, and with ``--report`` (a ``snakemake --report`` file) the
report's home page as ``report_demo_home.png``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_mlflow_benchmark import MlflowServer, _run_grid, chromium


def screenshot(browser: str, url: str, out: Path, width: int = 1600, height: int = 900,
               boxes: tuple[tuple[int, int, int, int], ...] = ()) -> None:
    """One PNG of ``url`` after its scripts ran (virtual-time budget): the parts ``boxes``
    (left, top, right, bottom; default the whole page) stacked, in 128 colours (small)."""
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--hide-scrollbars", f"--window-size={width},{height}", "--virtual-time-budget=30000",
         f"--screenshot={out}", url], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium --screenshot {url} failed: {proc.stderr[-1500:]}")
    from PIL import Image

    page = Image.open(out).convert("RGB")
    parts = [page.crop(box) for box in boxes] or [page]
    image = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), "white")
    for i, part in enumerate(parts):
        image.paste(part, (0, sum(p.height for p in parts[:i])))
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(out)


def main(argv: list[str] | None = None) -> int:
    from mlflow import MlflowClient

    from subspace_fsl.benchmark_tracking import CHOSEN_ALIAS, WORKFLOW_TYPE, view_url

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="MLflow store URI (default: run the tiny grid)")
    parser.add_argument("--name", default="mlflow", help="file name prefix (default mlflow)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs/img"))
    parser.add_argument("--width", type=int, default=3000, help="runs table width (px)")
    parser.add_argument("--report", help="a `snakemake --report` HTML file to screenshot too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            from subspace_fsl.config import load_config
            from subspace_fsl.tracking import tracking_uri

            store = tracking_uri(load_config(_run_grid(Path(tmp))))
        client = MlflowClient(store)
        experiment = next(e for e in client.search_experiments() if e.name != "Default")
        eid = experiment.experiment_id
        parent = client.search_runs([eid], "tags.`subspace_fsl.kind` = 'benchmark'")[0]
        models = sorted((m for m in client.search_registered_models()
                         if m.aliases and CHOSEN_ALIAS in m.aliases),
                        key=lambda m: "multisubspace" not in m.name)
        browser, out = chromium(), Path(args.out)
        with MlflowServer(store) as server:
            # the runs table is wider than 1600 px once every varying setting is a column
            screenshot(browser, view_url(eid, server.base), out / f"{args.name}_runs.png",
                       width=args.width, boxes=((0, 0, int(args.width * 0.74), 900),))
            # the page's top, then its Metrics table (where the demo's parent page has it: below
            # 10 child runs and the selection.* tags; another store may need other rows)
            screenshot(browser, f"{server.base}/#/experiments/{eid}/runs/{parent.info.run_id}"
                       f"?workflowType={WORKFLOW_TYPE}", out / f"{args.name}_parent.png",
                       height=2600, boxes=((0, 0, 1190, 130), (0, 1640, 1190, 2250)))
            if models:
                version = client.get_model_version_by_alias(models[0].name, CHOSEN_ALIAS)
                screenshot(browser,
                           f"{server.base}/#/models/{models[0].name}?workflowType={WORKFLOW_TYPE}",
                           out / f"{args.name}_chosen_model.png", height=700)
                model_id = getattr(version, "model_id", None) or version.source.split("/")[-1]
                if model_id.startswith("m-"):  # a logged model (MLflow 3): models:/m-...
                    screenshot(browser, f"{server.base}/#/experiments/{eid}/models/{model_id}"
                               f"?workflowType={WORKFLOW_TYPE}",
                               out / f"{args.name}_logged_model.png", height=1100,
                               boxes=((0, 0, 1190, 1100),))
        if args.report:
            screenshot(browser, Path(args.report).resolve().as_uri(),
                       out / "report_demo_home.png", height=1100, boxes=((0, 0, 1100, 1020),))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
