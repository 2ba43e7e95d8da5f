"""Make Great Expectations' Data Docs work offline.

GX's pages load jQuery, Bootstrap, bootstrap-table, Font Awesome, vega... from CDNs: offline they are
unstyled and their results tables empty (bootstrap-table fills them). `make_docs_offline` copies each
asset from a pinned package (pyproject.toml; bootstrap-table is vendored in gx_docs_assets/, MIT) into
`static/vendor/` and points every `<script src>`, `<link href>`, `<img src>` and CSS `url()` at it.
Nothing is fetched: an asset no package carries is dropped (the page says what is lost).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

VENDOR = Path("static") / "vendor"

# Where each package keeps its files: an importable package and a folder inside it.
SOURCES: dict[str, tuple[str, str]] = {
    "jquery": ("xstatic.pkg.jquery", "data"),
    "bootstrap": ("xstatic.pkg.bootstrap", "data"),
    "font-awesome": ("xstatic.pkg.font_awesome", "data"),
    "bootstrap-datepicker": ("xstatic.pkg.bootstrap_datepicker", "data"),
    "vega": ("js_lib_vega_embed", "static/js_lib_vega_embed"),
    "bootstrap-table": ("dgnet_pipeline", "gx_docs_assets/bootstrap-table"),
}

# Every CDN asset of GX 1.24's templates (query strings ignored): (source, file), or None for
# one that no package carries, with what its loss costs.
ASSETS: dict[str, tuple[str, str] | str] = {
    "https://code.jquery.com/jquery-3.7.1.min.js": ("jquery", "jquery.min.js"),
    # Bootstrap 4.3.1 asked, 4.5.3 packaged (the nearest 4.x: 5.x renames the classes GX uses);
    # its bundle carries Popper (1.16; 1.12.9 asked), so the separate Popper script goes.
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css":
        ("bootstrap", "css/bootstrap.min.css"),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js":
        ("bootstrap", "js/bootstrap.bundle.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js":
        "nothing lost: Popper is in bootstrap.bundle.min.js",
    # Font Awesome 6.6.0 asked, 6.2.1 packaged (the icons GX uses are in both); the CSS brings
    # its webfonts along.
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":
        ("font-awesome", "css/all.min.css"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
        ("bootstrap-table", "bootstrap-table.min.css"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js":
        ("bootstrap-table", "bootstrap-table.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        ("bootstrap-table", "bootstrap-table-filter-control.min.js"),
    # GX asks for the 1.19.0 style sheets of the filter-control extension; 1.19.1's match its script.
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        ("bootstrap-table", "bootstrap-table-filter-control.min.css"),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        ("bootstrap-table", "bootstrap-table-filter-control.min.css"),
    # bootstrap-datepicker 1.9.0 asked, 1.4.0 packaged (same jQuery plugin API; datepicker.css is
    # what 1.9 calls bootstrap-datepicker.css). It is the run-time filter of the index table.
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        ("bootstrap-datepicker", "datepicker.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        ("bootstrap-datepicker", "bootstrap-datepicker.js"),
    # vega@5, vega-lite@5, vega-embed@6 asked: 5.33, 5.23, 6.29 packaged (GX draws charts with them).
    "https://cdn.jsdelivr.net/npm/vega@5": ("vega", "vega5.js"),
    "https://cdn.jsdelivr.net/npm/vega-lite@5": ("vega", "vega-lite5.js"),
    "https://cdn.jsdelivr.net/npm/vega-embed@6": ("vega", "vega-embed6.js"),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "lost: the dark colour scheme (bootstrap-dark is in no Python package), pages stay light",
    # GX's own logo: the site carries a copy in static/images; not its dark-mode variant.
    "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png":
        ("site", "static/images/logo-long.png"),
    "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png":
        "lost: the dark-mode logo (in no package)",
}

_TAG = re.compile(r"""<(script|link|img)\b[^>]*?\b(src|href)=(["'])([^"']+)\3[^>]*>(\s*</script>)?""",
                  re.IGNORECASE)
_HTTP = re.compile(r"https?://", re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*(["']?)(https?://[^"')\s]+)\1\s*\)""", re.IGNORECASE)
_CSS_LOCAL_URL = re.compile(r"""url\(\s*(["']?)(?!data:|https?:|#)([^"')\s?#]+)[^"')]*\1\s*\)""",
                            re.IGNORECASE)
_SRI = re.compile(r"""\s(integrity|crossorigin)(=(["'])[^"']*\3)?""", re.IGNORECASE)


def _source_dir(name: str) -> Path | None:
    """The folder that package `name`'s files are in, or None when it is not installed."""
    module, sub = SOURCES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / sub


def _copy(source: Path, target: Path) -> None:
    """Copy one file, and for a style sheet the files its relative `url()`s name (fonts, images)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    if source.suffix == ".css":
        for match in _CSS_LOCAL_URL.finditer(source.read_text(encoding="utf-8", errors="replace")):
            extra = (source.parent / match.group(2)).resolve()
            if extra.is_file():
                dest = (target.parent / match.group(2)).resolve()
                if not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(extra, dest)


def make_docs_offline(docs_dir: str | os.PathLike) -> list[str]:
    """Point every http(s) asset of the Data Docs at `docs_dir` to a local copy; return (and print) the
    warnings: assets unknown to `ASSETS` or whose package is not installed, dropped."""
    docs = Path(docs_dir)
    local: dict[str, Path | str] = {}  # URL -> copied file, or why it is dropped
    warnings: list[str] = []

    def resolve(url: str) -> Path | str:
        key = url.split("?", 1)[0].split("#", 1)[0]
        if key in local:
            return local[key]
        entry = ASSETS.get(key)
        if entry is None:
            warnings.append(f"Data Docs: no packaged copy of {key}; dropped from the pages")
            result: Path | str = "lost: an asset that no installed package carries"
        elif isinstance(entry, str):
            result = entry
        else:
            name, relative = entry
            base = docs if name == "site" else _source_dir(name)
            if base is None or not (base / relative).is_file():
                warnings.append(f"Data Docs: {name} is not installed; {relative} dropped from pages")
                result = f"lost: {name}, not installed"
            else:
                result = docs / relative if name == "site" else docs / VENDOR / name / relative
                if name != "site":
                    _copy(base / relative, result)
        local[key] = result
        return result

    def relative_to(page: Path, target: Path) -> str:
        return Path(os.path.relpath(target, page.parent)).as_posix()

    pages = sorted(p for p in docs.rglob("*") if p.suffix in (".html", ".css") and p.is_file()
                   and not p.is_relative_to(docs / VENDOR))
    for page in pages:
        text = page.read_text(encoding="utf-8")

        def tag(match: re.Match[str], page: Path = page) -> str:
            ref = match.group(4)
            if not _HTTP.match(ref):
                # GX 1.24 links the validation pages' favicon one folder too high: use the site's copy
                path = ref.split("?", 1)[0]
                own = docs / re.sub(r"^(\.\.?/)+", "", path)
                if ref.startswith(("data:", "#")) or (page.parent / path).exists() or not own.is_file():
                    return match.group(0)
                return match.group(0).replace(ref, relative_to(page, own))
            target = resolve(ref)
            if isinstance(target, str):
                return f"<!-- offline Data Docs: a {match.group(1)} dropped; {target} -->"
            rewritten = match.group(0).replace(ref, relative_to(page, target))
            return _SRI.sub("", rewritten)  # no integrity check on a local copy (file:// has no CORS)

        def css_url(match: re.Match[str], page: Path = page) -> str:
            target = resolve(match.group(2))
            return "none" if isinstance(target, str) else f"url('{relative_to(page, target)}')"

        # a style sheet's url()s; a page's tags, then the url()s of its <style> blocks
        new = _CSS_URL.sub(css_url, text if page.suffix == ".css" else _TAG.sub(tag, text))
        if new != text:
            page.write_text(new, encoding="utf-8")
    warnings = list(dict.fromkeys(warnings))
    for warning in warnings:
        print(warning, file=sys.stderr)
    return warnings
