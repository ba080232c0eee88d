"""The documentation site builds with ``mkdocs build --strict`` and its code examples run.

Every ```python block of ``docs/*.md`` and ``README.md`` is executed, page by page in one fresh
namespace (blocks of a page build on each other), in a temporary working directory. A block
preceded by ``<!-- no-test: REASON -->`` is skipped; :data:`EXPECTED_SKIPS` lists every such
block, so a new skip fails the test until it is listed here with its reason.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hang_guard import HANG_GUARD_S

from rem_env.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
BLOCK = re.compile(r"(<!-- no-test: (?P<reason>[^>]*?) -->\s*\n)?```python\n(?P<code>.*?)```", re.S)

EXPECTED_SKIPS = {
    ("hub.md", "needs a published model on the Hub and network access"),
    ("hub.md", "uploads to the Hugging Face Hub (needs an account and network access)"),
}
"""(page, reason) of every example the suite does not run."""


def blocks(page: Path) -> list[tuple[str, str | None]]:
    """(code, skip reason or None) of every python block of ``page``."""
    text = page.read_text()
    return [(m.group("code"), m.group("reason")) for m in BLOCK.finditer(text)]


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_skips_are_the_listed_ones() -> None:
    found = {
        (page.name, reason) for page in PAGES for _, reason in blocks(page) if reason is not None
    }
    assert found == EXPECTED_SKIPS


@pytest.mark.parametrize(
    "page", [p for p in PAGES if any(r is None for _, r in blocks(p))], ids=lambda p: p.name
)
def test_code_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runnable = [code for code, reason in blocks(page) if reason is None]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(runnable):
        torch.manual_seed(0)
        try:
            exec(compile(code, f"{page.name}[python block {i}]", "exec"), namespace)
        except Exception as err:
            pytest.fail(f"{page.name}, python block {i} failed: {type(err).__name__}: {err}")


def cli_lines() -> list[tuple[str, list[str]]]:
    """(page, argv) of every ``rem-env`` command in the bash blocks of the docs and README."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():  # join `\` continuations
                command = line.split(" #")[0].strip()
                if "rem-env " in command:
                    argv = shlex.split(command.split("rem-env ", 1)[1])
                    found.append((page.name, argv))
    return found


def test_documented_commands_parse() -> None:
    """Every ``rem-env`` command the docs show is accepted by the parser (options stay true)."""
    lines = cli_lines()
    assert {argv[0] for _, argv in lines} >= {"dream", "play", "info", "bench"}
    parser = build_parser()
    for page, argv in lines:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page}: `rem-env {shlex.join(argv)}` does not parse")


def training_lines() -> list[tuple[str, list[str]]]:
    """(page, argv) of every ``rem-train`` / ``python -m rem_train`` command in bash blocks, and
    of every ``torchrun ... -m rem_train`` one."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():  # join `\` continuations
                command = line.split(" #")[0].strip()
                if command.startswith("torchrun ") and " -m rem_train " in command:
                    command = "python -m rem_train " + command.split(" -m rem_train ", 1)[1]
                for prefix in ("rem-train ", "python -m rem_train "):
                    if command.startswith(prefix):
                        found.append((page.name, shlex.split(command[len(prefix) :])))
    return found


def documented(prefix: str) -> list[tuple[str, list[str]]]:
    """(page, argv after ``prefix``) of every command starting with ``prefix`` in bash blocks."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():  # join `\` continuations
                command = line.split(" #")[0].strip()
                if command.startswith(prefix):
                    found.append((page.name, shlex.split(command[len(prefix) :])))
    return found


@pytest.mark.parametrize(
    ("module", "pages"),
    [
        ("pretrain_tokenizer", 2),
        ("pretrain_frame_conv", 2),
        ("train_event_reader", 2),
        ("train_event_window", 2),
        ("fit_patch_tokenizer", 2),
        ("swap_tokenizer", 2),
    ],  # README and the Training page
)
def test_documented_pretraining_commands_parse(module: str, pages: int) -> None:
    import importlib

    pretrain_parser = importlib.import_module(f"rem_train.{module}").parser
    prefix = f"python -m rem_train.{module} "
    found = documented(prefix)
    assert len(found) >= pages
    for page, argv in found:
        try:
            pretrain_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page}: `{prefix}{shlex.join(argv)}` does not parse")


@pytest.mark.parametrize(
    "module",
    ["score", "dream_to_real", "serve_check", "object_check", "set_openings", "collect_replay"],
)
def test_documented_scoring_commands_parse(module: str) -> None:
    """Every ``python -m rem_train.<module>`` command of these modules the docs show parses."""
    import importlib

    build_parser = importlib.import_module(f"rem_train.{module}").build_parser
    prefix = f"python -m rem_train.{module} "
    found = documented(prefix)
    assert found, f"no page shows `{prefix}...`"
    for page, argv in found:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page}: `{prefix}{shlex.join(argv)}` does not parse")


def test_documented_training_commands_parse() -> None:
    """Every trainer command the docs show is accepted by ``rem-train``'s parser."""
    from rem_train.cli import parser as training_parser

    lines = training_lines()
    assert len(lines) >= 4
    parser = training_parser()
    for page, argv in lines:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page}: `rem-train {shlex.join(argv)}` does not parse")


def test_readme_first_command_makes_a_gif(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's first command, shortened to 3 steps."""
    readme = [argv for page, argv in cli_lines() if page == "README.md" and "dream.gif" in argv]
    assert readme, "the README's first command no longer makes dream.gif"
    monkeypatch.chdir(tmp_path)
    assert main([*readme[0], "--steps", "3"]) == 0
    assert (tmp_path / "dream.gif").stat().st_size > 0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built once with ``mkdocs build --strict`` (the build fails on any warning)."""
    site_dir = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site_dir


def test_mkdocs_build_strict(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "api" / "index.html").is_file()


CDN = re.compile(
    r"cdn\.jsdelivr|unpkg\.com|polyfill\.io|https?://[^\s\"'<>]*mathjax[^\s\"'<>]*\.js", re.I
)
LOCAL_SCRIPTS = [
    "javascripts/mathjax.js",
    "assets/javascripts/mathjax/tex-chtml.js",
    "assets/javascripts/mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff",
    "assets/javascripts/mermaid/mermaid.tiny.js",
]
"""What the pages need to render formulas and diagrams, served from the site itself."""


def test_site_loads_no_script_from_a_cdn(site: Path) -> None:
    """Formulas and diagrams render offline: every script is the site's own, and MathJax, its
    fonts and mermaid are in the built site (``benchmarks/docs_screenshot.py`` looks at them
    in a browser)."""
    for name in LOCAL_SCRIPTS:
        assert (site / name).is_file(), f"{name} is missing from the built site"
    for page in site.rglob("*.html"):
        html = page.read_text()
        where = page.relative_to(site)
        assert not CDN.search(html), f"{where} names a CDN: {CDN.search(html).group(0)}"
        for src in re.findall(r"<script[^>]*\bsrc=\"([^\"]*)\"", html):
            assert "://" not in src and not src.startswith("//"), f"{where} loads {src}"
    page = (site / "how-rem-works" / "index.html").read_text()
    assert 'class="arithmatex"' in page
    assert '<pre class="mermaid">' in page
    for name in LOCAL_SCRIPTS[:2] + LOCAL_SCRIPTS[3:]:
        assert f'src="../{name}"' in page, f"how-rem-works does not load {name}"


EXTERNAL_ASSET = re.compile(
    r"<(?:link|img|iframe|source|video|audio|embed)\b[^>]*?\b(?:href|src|srcset)=\"((?:https?:)?//[^\"]*)\"",
    re.I,
)
"""A page element that makes the browser fetch from elsewhere (links ``<a href>`` are fine)."""
CSS_FETCH = re.compile(r"(?:url\(\s*[\"']?|@import\s+[\"'])((?:https?:)?//[^\"')\s]*)", re.I)


def test_site_fetches_nothing_from_elsewhere(site: Path) -> None:
    """Offline, and no third party (Google Fonts, CDNs) learns who reads the docs: no page
    element or stylesheet of the built site loads anything from another host."""
    for page in site.rglob("*.html"):
        html = page.read_text()
        where = page.relative_to(site)
        for host in ("fonts.googleapis.com", "fonts.gstatic.com"):
            assert host not in html, f"{where} loads fonts from {host}"
        found = EXTERNAL_ASSET.search(html)
        assert found is None, f"{where} fetches {found.group(1)}"
        for style in re.findall(r"<style[^>]*>(.*?)</style>", html, re.S):
            found = CSS_FETCH.search(style)
            assert found is None, f"{where} fetches {found.group(1)} in a <style>"
    for sheet in site.rglob("*.css"):
        found = CSS_FETCH.search(sheet.read_text(errors="replace"))
        assert found is None, f"{sheet.relative_to(site)} fetches {found.group(1)}"
