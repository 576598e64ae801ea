"""Great Expectations Data Docs that work offline.

GX writes its pages with stylesheets, scripts and fonts from CDNs (and a logo fetched from
its own bucket with the data context's id in the query). Without the network the pages show
as bare text. :func:`make_self_contained` copies those files from npm packages installed at
set-up (``scripts/setup.sh`` installs the versions below into ``.cache/web/node_modules``)
into the site's ``static/vendor/`` and points every page at them by relative path, so a
site opens from disk, from an MLflow artifact download or from a copied folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

#: URL as GX 1.x writes it -> file in node_modules (the same package and version; the
#: minified build where the CDN served the full one). npm specs in scripts/setup.sh.
CDN_FILES = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/dist/css/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/dist/js/bootstrap.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js/dist/umd/popper.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/dist/jquery.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": (
        "@forevolve/bootstrap-dark/dist/css/bootstrap-prefers-dark.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "@fortawesome/fontawesome-free/css/all.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (
        "bootstrap-datepicker/dist/css/bootstrap-datepicker.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (
        "bootstrap-datepicker/dist/js/bootstrap-datepicker.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table/dist/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table/dist/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": (
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.js"
    ),
    # GX links these two from 1.19.0 beside the rest from 1.19.1: one release apart, the same rules
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": (
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": (
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/build/vega-embed.min.js",
}
#: Files a vendored stylesheet loads by relative URL (Font Awesome's fonts; woff2 is what
#: every current browser takes first).
COMPANIONS = {
    "@fortawesome/fontawesome-free/css/all.min.css": [
        f"@fortawesome/fontawesome-free/webfonts/{name}.woff2"
        for name in ("fa-brands-400", "fa-regular-400", "fa-solid-900", "fa-v4compatibility")
    ]
}
#: GX's logo, fetched from its bucket with a timestamp and the data context's id; the site has it.
_LOGO = re.compile(r"https://great-expectations-web-assets\.s3[^\"']*/logo-long\.png[^\"']*")
#: A page element that loads something from the network (links to pages are fine offline).
_REMOTE_ASSET = re.compile(
    r"<(?:script|img)\b[^>]*\bsrc=\"(https?://[^\"]+)\"|<link\b[^>]*\bhref=\"(https?://[^\"]+)\""
)


def make_self_contained(site: Path, node_modules: Path) -> list[str]:
    """Vendor the CDN files of the Data Docs ``site`` (its ``index.html`` folder) from
    ``node_modules`` and rewrite its pages to load them locally; returns the network
    assets still referenced (none, unless GX changed its links or the packages are missing),
    each logged as a warning."""
    vendor = site / "static" / "vendor"
    missing = sorted({f for f in CDN_FILES.values() if not (node_modules / f).is_file()})
    if missing:
        log.warning(
            "Data Docs at %s load their styles and scripts from CDNs: %d file(s) not installed under %s "
            "(e.g. %s); run scripts/setup.sh",
            site,
            len(missing),
            node_modules,
            missing[0],
        )
    available = {url: path for url, path in CDN_FILES.items() if path not in missing}
    for path in set(available.values()):
        for needed in [path, *COMPANIONS.get(path, [])]:
            target = vendor / needed
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(node_modules / needed, target)
    remote: set[str] = set()
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        here = page.parent

        def local(path: Path, here: Path = here) -> str:
            return Path(os.path.relpath(path, here)).as_posix()

        for url, path in available.items():
            html = html.replace(f'"{url}"', f'"{local(vendor / path)}"')
        html = _LOGO.sub(local(site / "static" / "images" / "logo-long.png"), html)
        page.write_text(html, encoding="utf-8")
        remote.update(a or b for a, b in _REMOTE_ASSET.findall(html))
    if remote:
        log.warning("Data Docs at %s still load %d file(s) from the network: %s", site, len(remote), sorted(remote))
    return sorted(remote)
