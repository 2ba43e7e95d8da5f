"""Screenshot the MLflow UI's training runs grouped by a tag (docs/mlflow_grouped_by_variant.png).

    mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5055 &
    python scripts/mlflow_screenshot.py --url http://127.0.0.1:5055 --experiment dgnet \
        --group-by dgnet.variant --out docs/mlflow_grouped_by_variant.png

Drives a real headless Chromium (Playwright's Python package with the system's browser,
`--chromium /usr/bin/chromium`; nothing is downloaded) through what a user clicks: the experiment's
runs page, "Group by" -> the tag, so each variant is one row with its metrics averaged over its
seeds. Not a dependency of the project: `pip install playwright` in any environment.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path


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
    parser.add_argument("--group-by", default="dgnet.variant", help="a run tag")
    parser.add_argument("--filter", default=" and ".join(  # the trained models: not the warm-ups,
        ["attributes.status = 'FINISHED'"]                    # the teachers' parent, the evaluate runs
        + [f"tags.`dgnet.variant` != '{v}'" for v in ("warmup", "teacher-mean", "all")]))
    parser.add_argument("--columns", nargs="*", default=["eval/mAP", "eval/rank1"],
                        help="metric columns to show, by name")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("docs/mlflow_grouped_by_variant.png"))
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    exp = experiment_id(args.url, args.experiment)
    filter_ = urllib.request.quote(args.filter)
    page_url = f"{args.url}/#/experiments/{exp}/runs?searchFilter={filter_}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(page_url)
        page.wait_for_selector("text=Group by", timeout=60_000)
        close = page.get_by_role("button", name="Close")  # the assistant's side panel, when it opens
        if close.count():
            close.first.click()
        page.get_by_role("button", name="Toggle sidebar").first.click()  # room for the table
        page.get_by_role("button", name="Columns", exact=True).click()
        chooser = page.get_by_role("dialog")
        for column in ("Dataset", "Source", "Models", *args.columns):  # off (room), then the metrics on
            chooser.get_by_placeholder("Search columns").fill(column)
            chooser.get_by_text(column, exact=True).first.click()
        page.keyboard.press("Escape")
        page.get_by_role("button", name="Group by").click()
        page.get_by_role("menuitemcheckbox", name=args.group_by, exact=True).first.click()
        page.keyboard.press("Escape")
        for header, extra in (("Run Name", 80), *((c, 30) for c in args.columns)):  # no "..." in the names
            box = page.locator(".ag-header-cell", has_text=header).first.bounding_box()
            if box:
                page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
                page.mouse.down()
                page.mouse.move(box["x"] + box["width"] + extra, box["y"] + box["height"] / 2, steps=5)
                page.mouse.up()
        page.mouse.move(1, 1)  # no tooltip in the picture
        page.wait_for_timeout(2000)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"{args.out}: {page_url} grouped by tag {args.group_by}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
