"""Screenshot of a docs page in a browser with no network: do its formulas and diagrams render?

The site bundles MathJax and mermaid (``docs/assets/javascripts/``) instead of loading them from a
CDN. This script checks that offline: it builds the site with ``mkdocs build --strict``, serves it
on 127.0.0.1, opens a page in headless Chromium whose host resolver knows no other host, and

* dumps the page's DOM after its scripts ran and counts what rendered: every formula that
  ``pymdownx.arithmatex`` marked must hold a MathJax ``mjx-container``, and every mermaid block
  must have been replaced by its diagram (no ``<pre class="mermaid">`` left);
* saves a PNG screenshot, to look at;
* lists the requests the local server answered with an error (a missing font, say).

It exits with status 1 when a check fails and 2 when Chromium is missing. Nothing here is part
of the test suite: ``tests/test_docs.py`` checks without a browser that the built pages load no
script from a CDN.

How to run
----------
From the repository root, with Debian's Chromium (``apt-get install -y chromium``)::

    python benchmarks/docs_screenshot.py                  # how-rem-works/ into benchmarks/results/
    python benchmarks/docs_screenshot.py --page index.html --out /tmp/home.png
    python benchmarks/docs_screenshot.py --site-dir site  # an already built site
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "how-rem-works-offline.png"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # the page is this repository's own site, served on loopback
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    # No host but the local server resolves: what loads, loads without a network.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--page", default="how-rem-works/", help="page path inside the site")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--window-size", default="1280,3000", help="WIDTH,HEIGHT in pixels")
    parser.add_argument(
        "--site-dir", type=Path, default=None, help="serve this built site instead of building one"
    )
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: on PATH)")
    parser.add_argument(
        "--wait-ms",
        type=int,
        default=15_000,
        help="virtual time the page's scripts get before the DOM dump and the screenshot",
    )
    parser.add_argument(
        "--colors",
        type=int,
        default=256,
        help="quantize the PNG to this many colours to keep it small (0: keep Chromium's PNG)",
    )
    return parser.parse_args(argv)


def find_chromium(name: str | None) -> str:
    """Path of the Chromium executable, or exit with status 2 saying how to get one."""
    for candidate in [name] if name else CHROMIUM_NAMES:
        path = shutil.which(candidate)
        if path:
            return path
    sys.stderr.write(
        f"docs_screenshot: Chromium not found ({name or ', '.join(CHROMIUM_NAMES)} on PATH).\n"
        "Install it (Debian/Ubuntu: apt-get install -y chromium) or pass --chromium PATH.\n"
    )
    raise SystemExit(2)


def build_site(site_dir: Path) -> None:
    """``mkdocs build --strict`` into ``site_dir``; exit with mkdocs's output if it fails."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"docs_screenshot: mkdocs build failed (exit {result.returncode})")


class Server:
    """The built site on 127.0.0.1 (a free port) in a background thread; records the requests."""

    def __init__(self, site_dir: Path) -> None:
        self.served: list[str] = []
        self.failed: list[str] = []
        served, failed = self.served, self.failed

        class Handler(SimpleHTTPRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                served.append(self.path)
                if int(code) >= 400:
                    failed.append(f"{code} {self.path}")

            def log_message(self, format: str, *args: object) -> None:
                pass

        handler = functools.partial(Handler, directory=str(site_dir))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def chromium(executable: str, args: list[str], profile: Path) -> str:
    """Run headless Chromium with a fresh profile; its stdout (the DOM for ``--dump-dom``)."""
    command = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-3000:])
        raise SystemExit(f"docs_screenshot: chromium exited with {result.returncode}")
    return result.stdout


def check_dom(source_html: str, dom: str, served: list[str]) -> list[str]:
    """What did not render: compares the built page's markup with the DOM after its scripts ran.

    MathJax's CommonHTML output draws characters in its own web fonts: a typeset formula whose
    font was never requested shows as a blank, so at least one glyph font must have been served.
    """
    formulas = len(re.findall(r'class="arithmatex"', source_html))
    typeset = len(re.findall(r"<mjx-container", dom))
    diagrams = len(re.findall(r'<pre class="mermaid"', source_html))
    left = len(re.findall(r'<pre class="mermaid"', dom))
    print(f"formulas: {typeset} of {formulas} typeset by MathJax")
    fonts = sorted({Path(p).name for p in served if "/fonts/" in p and "MathJax_Zero" not in p})
    print(f"mermaid diagrams: {diagrams - left} of {diagrams} rendered")
    print(f"MathJax fonts loaded: {', '.join(fonts) or 'none'}")
    problems = []
    if typeset < formulas:
        problems.append(f"{formulas - typeset} formula(s) not typeset")
    if formulas and not fonts:
        problems.append("MathJax loaded no glyph font: the formulas show as blanks")
    if left:
        problems.append(f"{left} mermaid block(s) left as text")
    return problems


def shrink_png(path: Path, colors: int) -> None:
    """Re-save ``path`` with ``colors`` palette colours (screenshots of text stay legible)."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    executable = find_chromium(args.chromium)
    with tempfile.TemporaryDirectory(prefix="rem-docs-") as tmp:
        site_dir = args.site_dir
        if site_dir is None:
            site_dir = Path(tmp) / "site"
            print("building the site (mkdocs build --strict) ...")
            build_site(site_dir)
        page_file = site_dir / args.page
        if page_file.is_dir():
            page_file = page_file / "index.html"
        if not page_file.is_file():
            raise SystemExit(f"docs_screenshot: no page {args.page!r} in {site_dir}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with Server(site_dir) as server:
            url = server.url + args.page
            print(f"serving {site_dir} at {server.url}; opening {url} with no other host reachable")
            wait = f"--virtual-time-budget={args.wait_ms}"
            dom = chromium(executable, [wait, "--dump-dom", url], Path(tmp) / "profile-dom")
            chromium(
                executable,
                [wait, f"--window-size={args.window_size}", f"--screenshot={args.out}", url],
                Path(tmp) / "profile-shot",
            )
        problems = check_dom(page_file.read_text(), dom, server.served)
    if server.failed:
        problems.append("requests that failed: " + ", ".join(sorted(set(server.failed))))
    if args.colors:
        shrink_png(args.out, args.colors)
    print(f"screenshot: {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
