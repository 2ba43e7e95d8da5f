"""Data Docs work offline: no page loads a script, style sheet, image or font from the internet, and
every local file a page loads is there (dgnet_pipeline/offline_docs.py)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from dgnet_pipeline import validate as stage
from dgnet_pipeline.offline_docs import make_docs_offline
from tests.fixtures import make_market

CSS_URL = re.compile(r"""url\(\s*(["']?)([^"')]+)\1\s*\)""", re.IGNORECASE)


class _Assets(HTMLParser):
    """The assets an HTML page loads: script src, link href, img src, and the url()s of its CSS."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        key = {"script": "src", "link": "href", "img": "src"}.get(tag)
        if key and values.get(key):
            self.refs.append(str(values[key]))
        if values.get("style"):
            self.refs += [m.group(2) for m in CSS_URL.finditer(str(values["style"]))]
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.refs += [m.group(2) for m in CSS_URL.finditer(data)]


def asset_refs(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    if page.suffix == ".css":
        return [m.group(2) for m in CSS_URL.finditer(text)]
    parser = _Assets()
    parser.feed(text)
    return parser.refs


def offline_problems(site: Path) -> list[str]:
    """Each http(s) asset, and each local asset that is missing, of every page and style sheet."""
    problems = []
    for page in sorted(p for p in site.rglob("*") if p.suffix in (".html", ".css")):
        for ref in asset_refs(page):
            if ref.startswith("data:") or ref.startswith("#"):
                continue
            parts = urlsplit(ref)
            if parts.scheme or ref.startswith("//"):
                problems.append(f"{page.relative_to(site)}: loads {ref}")
            elif not (page.parent / unquote(parts.path)).is_file():
                problems.append(f"{page.relative_to(site)}: {ref} is missing")
    return problems


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data Docs of a small good Market tree, built by the validate stage's own entry point."""
    base = tmp_path_factory.mktemp("offline")
    root = make_market(base / "data")
    code = stage.run_validation(root, report=base / "validation.json", docs=base / "gx_docs",
                                manifest=base / "manifest.csv")
    assert code == 0
    return base / "gx_docs"


def test_no_page_loads_from_the_internet(site: Path) -> None:
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 7  # index, 3 suites, 3 validation results
    assert offline_problems(site) == []


def test_results_tables_have_their_scripts(site: Path) -> None:
    """bootstrap-table fills the results tables: without it the index is an empty table."""
    refs = asset_refs(site / "index.html")
    for needed in ("jquery.min.js", "bootstrap.bundle.min.js", "bootstrap-table.min.js",
                   "bootstrap-table-filter-control.min.js", "bootstrap.min.css", "all.min.css"):
        assert any(ref.endswith(needed) for ref in refs), needed
    assert list((site / "static" / "vendor" / "font-awesome" / "webfonts").glob("*.woff2"))
    # bootstrap-table comes from the vendored copy (no npm at install)
    assert (site / "static" / "vendor" / "bootstrap-table" / "bootstrap-table.min.js").is_file()


def test_unknown_assets_are_dropped_not_fetched(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "sub").mkdir()
    page = tmp_path / "sub" / "page.html"
    page.write_text(
        '<html><head><script src="https://cdn.example.org/x.js"></script>\n'
        '<script src="https://code.jquery.com/jquery-3.7.1.min.js" integrity="sha384-abc" '
        'crossorigin="anonymous"></script>\n'
        "<style>.a { background: url('https://cdn.example.org/bg.png') no-repeat }</style></head>\n"
        '<body><img src="https://cdn.example.org/i.png?v=1"><a href="https://example.org">a link</a>'
        "</body></html>", encoding="utf-8")
    (tmp_path / "site.css").write_text("b { background: url(https://cdn.example.org/b.png) }")
    warnings = make_docs_offline(tmp_path)
    assert offline_problems(tmp_path) == []
    text = page.read_text()
    assert '<script src="../static/vendor/jquery/jquery.min.js"></script>' in text  # no SRI on a local copy
    assert "cdn.example.org/x.js" not in text and "https://example.org" in text  # links stay links
    assert any("https://cdn.example.org/x.js" in w for w in warnings)
    assert "https://cdn.example.org/i.png" in capsys.readouterr().err
