"""Screenshot the MLflow UI's runs table in the pipeline's saved view (docs/mlflow_variants_view.png).

    mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5055 &
    python scripts/mlflow_screenshot.py --url http://127.0.0.1:5055 --experiment dgnet \
        --out docs/mlflow_variants_view.png

Opens what a user opens: the experiment's runs page in the saved view the pipeline stores on its
experiment ("Variants: rank-1 and mAP over seeds", dgnet_pipeline.mlflow_runs.VIEW_ID), in a real
headless Chromium (Playwright's Python package with the system's browser, `--chromium
/usr/bin/chromium`; nothing is downloaded). Not a dependency of the project: `pip install
playwright` in any environment.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

VIEW_ID = "dgnet-variants"  # dgnet_pipeline.mlflow_runs.VIEW_ID (this script runs without dgnet)


def experiment_id(url: str, name: str) -> str:
    """The id of experiment `name`, from the server's REST API."""
    query = urllib.request.quote(name)
    endpoint = f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={query}"
    with urllib.request.urlopen(endpoint) as reply:
        return json.load(reply)["experiment"]["experiment_id"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000")
    parser.add_argument("--experiment", default="dgnet")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=760)
    parser.add_argument("--out", type=Path, default=Path("docs/mlflow_variants_view.png"))
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    exp = experiment_id(args.url, args.experiment)
    page_url = f"{args.url}/#/experiments/{exp}/runs?viewStateShareKey={VIEW_ID}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(page_url)
        page.wait_for_selector("text=Group by", timeout=60_000)
        close = page.get_by_role("button", name="Close")  # the assistant's side panel, when it opens
        if close.count():
            close.first.click()
        page.mouse.move(1, 1)  # no tooltip in the picture
        page.wait_for_timeout(3000)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"{args.out}: {page_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
