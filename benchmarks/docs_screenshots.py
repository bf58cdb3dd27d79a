"""Pictures of the docs site: builds it (`mkdocs build --strict`) and photographs pages in headless Chromium.

    python -m benchmarks.docs_screenshots [--out docs/screenshots] [--page index.md ...]

Writes `docs-<page>.png` per page (default: the home page and the generated HTTP endpoint reference). Needs the
`dev` extra (MkDocs, Playwright) and Debian's chromium.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAGES = ["index.md", "reference/openapi.md"]


def build(site: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT, env=env, check=True
    )


def page_file(site: Path, page: str) -> Path:
    stem = page.removesuffix(".md")
    return site / "index.html" if stem == "index" else site / stem / "index.html"


def photograph(site: Path, pages: list[str], out: Path, chromium: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        view = browser.new_page(viewport={"width": 1280, "height": 860})
        for page in pages:
            view.goto(page_file(site, page).as_uri())
            view.wait_for_load_state("load")
            target = out / f"docs-{page.removesuffix('.md').replace('/', '-')}.png"
            view.screenshot(path=str(target))
            written.append(target)
        browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--page", action="append", help="a page under docs/, e.g. how-to/train.md (repeatable)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        build(site)
        for path in photograph(site, args.page or DEFAULT_PAGES, args.out, args.chromium):
            print(path)


if __name__ == "__main__":
    main()
