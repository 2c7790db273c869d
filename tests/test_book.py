"""The built book, as a reader's browser sees it (headless Chromium, fully offline).

Needs `make book` first; skipped when the book is not built, unless SDE_REQUIRE_BOOK=1 (as in `make check-book`),
which turns a missing book into a failure. Screenshots go to book/_build/screenshots/.
"""
import functools
import http.server
import os
import re
import shutil
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "book" / "_build" / "html"
SHOTS = ROOT / "book" / "_build" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium")
SKIP_PAGES = {"genindex.html", "search.html", "index.html"}  # index.html is a redirect to nbs/index.html


def _pages():
    return sorted(p for p in HTML.rglob("*.html") if p.relative_to(HTML).as_posix() not in SKIP_PAGES
                  and "_static" not in p.parts and "_sources" not in p.parts)


@pytest.fixture(scope="module")
def book():
    if not (HTML / "nbs" / "index.html").exists():
        if os.environ.get("SDE_REQUIRE_BOOK"):
            pytest.fail("the book is not built: run `make book` first")
        pytest.skip("the book is not built (run `make book`)")
    return HTML


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.ids, self.srcs = [], set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag in ("img", "script") and a.get("src"):
            self.srcs.append(a["src"])
        if tag == "link" and a.get("href"):
            self.srcs.append(a["href"])


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_internal_links_resolve(book):
    broken = []
    for page in _pages():
        parsed = _parse(page)
        for ref in parsed.hrefs + parsed.srcs:
            url = urlparse(ref)
            if url.scheme or ref.startswith("//") or ref.startswith("mailto:"):
                continue  # external links are checked for *requests* below, not for existence
            target = page if not url.path else (page.parent / unquote(url.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(book)} -> {ref}")
            elif url.fragment and target.suffix == ".html" and url.fragment not in _parse(target).ids:
                broken.append(f"{page.relative_to(book)} -> {ref} (no such anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(broken)


class _ReaderText(HTMLParser):
    """The text a reader sees: prose and cell outputs, without code-cell sources (docstrings may name labels). Printed
    outputs render inside `<div class="highlight">` within a `cell_output`: those are kept (a label typed into a
    printout is shown to the reader), only highlighted code outside an output is skipped."""
    SKIP = ("cell_input", "highlight")

    def __init__(self):
        super().__init__()
        self.stack, self.parts = [], []        # per open element: (skipped, inside a cell output)

    def handle_starttag(self, tag, attrs):
        if tag in ("br", "img", "meta", "link", "hr", "input"):
            return
        classes = (dict(attrs).get("class") or "").split()
        parent_skip, parent_output = self.stack[-1] if self.stack else (False, False)
        output = parent_output or "cell_output" in classes
        skip = parent_skip or tag in ("script", "style") or not output and any(c in classes for c in self.SKIP)
        self.stack.append((skip, output))

    def handle_endtag(self, tag):
        if tag not in ("br", "img", "meta", "link", "hr", "input") and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not (self.stack and self.stack[-1][0]):
            self.parts.append(data)


def test_reader_text_keeps_printed_outputs_and_drops_code():
    "The parser behind the label check, on myst-nb's markup: a printout's text is kept, a code cell's source is not."
    html_text = ('<div class="cell docutils container"><div class="cell_input docutils container">'
                 '<div class="highlight-ipython3 notranslate"><div class="highlight"><pre>x = 1  # eq-in-code</pre>'
                 '</div></div></div><div class="cell_output docutils container"><div class="output stream '
                 'highlight-myst-ansi notranslate"><div class="highlight"><pre>eq-printed: 1e-9</pre></div></div>'
                 '</div></div><p>prose</p><script>var a = "eq-script";</script>')
    p = _ReaderText()
    p.feed(html_text)
    text = " ".join(p.parts)
    assert "eq-printed" in text and "prose" in text
    assert "eq-in-code" not in text and "eq-script" not in text


def test_no_equation_label_shown_as_text(book):
    """A reference written with plain backticks (`eq-ito-lemma`) or a label typed into a printout renders as the raw
    label, and `-W` does not catch it: no page may show `eq-...`, `ex-...` or `fig-...` labels as text."""
    shown = {}
    for page in _pages():
        p = _ReaderText()
        p.feed(page.read_text(encoding="utf-8"))
        text = " ".join(p.parts)
        labels = sorted(set(re.findall(r"(?<![\w/#.-])(?:eq|ex|fig)-[a-z0-9]+(?:-[a-z0-9]+)*\b", text)))
        if labels:
            shown[page.relative_to(HTML).as_posix()] = labels
    assert not shown, f"raw labels shown to readers: {shown}"


def test_toolbox_numbers_carry_their_chapter_prefix(book):
    "Toolbox equations and exercises are numbered A<k>.<n> on their page (book_fixes), not by one global counter."
    for page in sorted((HTML / "nbs").glob("A[0-9]*_*.html")):
        prefix = re.match(r"(A\d+)", page.stem).group(1)
        html_text = page.read_text(encoding="utf-8")
        eqnos = re.findall(r'<span class="eqno">\(([^)]*)\)', html_text)
        assert all(re.fullmatch(rf"{prefix}\.\d+", n) for n in eqnos), (page.name, eqnos[:5])
        assert [int(n.split(".")[1]) for n in eqnos] == list(range(1, len(eqnos) + 1)), (page.name, eqnos)
    a1 = (HTML / "nbs" / "A1_toy.html").read_text(encoding="utf-8")
    assert '<span class="eqno">(A1.1)' in a1


def test_rendered_code_has_no_nbdev_directives_and_engineering_code_is_folded(book):
    """`#| export` and the other nbdev directives are for nbdev, not for readers (book_fixes drops them); cells tagged
    `hide-input` (argument parsing, checkpoints, validation) render folded behind a "Show code cell source" toggle."""
    shown = {}
    for page in _pages():
        hits = re.findall(r"#\|\s*(?:export|hide|exporti|eval)\b", page.read_text(encoding="utf-8"))
        if hits:
            shown[page.relative_to(HTML).as_posix()] = len(hits)
    assert not shown, f"nbdev directives shown to readers: {shown}"
    cli = (HTML / "nbs" / "A6_cli.html").read_text(encoding="utf-8")
    assert cli.count('<details class="admonition hide above-input"') >= 3   # the parser, `train`, `sample`


def test_pages_list_every_chapter(book):
    names = {p.relative_to(book).as_posix() for p in _pages()}
    for chapter in ("nbs/01_brownian.html", "nbs/02_solvers.html", "nbs/03_fokker_planck.html"):
        assert chapter in names


@pytest.fixture(scope="module")
def server(book):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(server):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (`make browser-deps` installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        yield b
        b.close()


# Text a reader sees outside code blocks; raw TeX delimiters left there mean MathJax did not typeset.
_VISIBLE_PROSE = """() => {
  const clone = document.querySelector('main, article, body').cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, mjx-container, .highlight, .cell_output').forEach(e => e.remove());
  return clone.innerText;
}"""


def _load(browser, url, shot=None):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    # a request the server answers with an error (a font or script the page asks for under the wrong path) is an error
    page.on("response", lambda r: errors.append(f"HTTP {r.status} for {r.url}") if r.status >= 400 else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load")
    page.wait_for_function("() => !window.MathJax || (window.MathJax.startup && window.MathJax.startup.promise)", timeout=20000)
    page.evaluate("() => window.MathJax && window.MathJax.startup ? window.MathJax.startup.promise : null")
    page.wait_for_timeout(300)
    if shot:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / shot), full_page=False)
    return page, requests, errors


def test_every_chapter_has_a_page(book):
    pages = {p.relative_to(HTML).as_posix() for p in _pages()}
    missing = [f"nbs/{nb.stem}.html" for nb in sorted((ROOT / "nbs").glob("[0-9A]*.ipynb"))
               if nb.stem != "A6b_main" and f"nbs/{nb.stem}.html" not in pages]
    assert not missing, f"chapters without a page: {missing}"


EXPLORER_PAGES = ["nbs/02_solvers.html", "nbs/03_fokker_planck.html", "nbs/04_sde.html", "nbs/05_reverse.html",
                  "nbs/06_score_matching.html", "nbs/07_smld.html", "nbs/09_sampling.html", "nbs/A1_toy.html",
                  "nbs/A7_explorers.html"]
NUMBERED_PAGES = ["nbs/01_brownian.html", "nbs/02_solvers.html", "nbs/03_fokker_planck.html"]


def test_explorer_pages_are_listed(book):
    "Every page with an explorer is moved by the page test below (a new explorer is not left out)."
    found = sorted(p.relative_to(book).as_posix() for p in _pages() if 'class="sde-player"' in p.read_text(errors="ignore"))
    assert found == sorted(EXPLORER_PAGES)


def _numbered_equations_and_figures(page, rel) -> list[str]:
    "Equations numbered by chapter, (1.1) and so on, and at least one figure."
    problems = []
    numbers = page.locator("span.eqno").all_inner_texts()
    if not (numbers and re.fullmatch(r"\(\d+\.\d+\)", numbers[0].strip())):
        problems.append(f"{rel}: equations not numbered by chapter: {numbers[:3]}")
    if page.locator("img[src*='.png']").count() < 1:
        problems.append(f"{rel}: no figure")
    return problems


def _explorers_move(page, rel) -> list[str]:
    "Each slider of each explorer changes the frame shown and its value label."
    players = page.locator(".sde-player")
    if players.count() < 1:
        return [f"{rel}: no explorer"]
    problems = []
    for p in range(players.count()):
        player = players.nth(p)
        player.scroll_into_view_if_needed()
        img = player.locator("img.sde-player-frame")
        if not img.evaluate("i => i.complete && i.naturalWidth > 0"):
            problems.append(f"{rel}: explorer {p}: the first frame did not load")
        sliders = player.locator("input.sde-player-slider")
        if sliders.count() < 1:
            problems.append(f"{rel}: explorer {p} has no slider")
        for k in range(sliders.count()):
            slider, label = sliders.nth(k), player.locator(".sde-player-controls output").nth(k)
            before = (player.get_attribute("data-frame"), img.get_attribute("src"), label.inner_text())
            top = slider.get_attribute("max")
            target = "0" if slider.input_value() == top else top     # move to the other end of its range
            slider.fill(target)
            after = (player.get_attribute("data-frame"), img.get_attribute("src"), label.inner_text())
            if not all(a != b for a, b in zip(before, after)):
                problems.append(f"{rel}: explorer {p}, slider {k} did not change the frame: {before[0]} -> {after[0]}")
            if not img.evaluate("i => i.complete && i.naturalWidth > 0"):
                problems.append(f"{rel}: explorer {p}, slider {k}: the new frame did not load")
        if p == 0:
            SHOTS.mkdir(parents=True, exist_ok=True)
            player.screenshot(path=str(SHOTS / ("explorer_" + Path(rel).stem + ".png")))
    return problems


# One test per page, so that `pytest -n` spreads the pages (MathJax typesetting, seconds each) over the cores. Each page
# is loaded once and every browser check of it runs on that load: typesetting, figures, no network, no JS errors, and
# where it applies, chapter-numbered equations and explorers whose sliders move (nothing fetched while they move).
@pytest.mark.parametrize("rel", [p.relative_to(HTML).as_posix() for p in _pages()] if HTML.exists() else [])
def test_pages_offline_typeset_and_figures(book, server, browser, rel):
    problems = []
    page, requests, errors = _load(browser, urljoin(server, rel), shot=rel.replace("/", "_") + ".png")
    html = (book / rel).read_text(encoding="utf-8")
    has_math = "\\(" in html or "\\[" in html or 'class="math' in html
    if has_math and page.locator("mjx-container").count() == 0:
        problems.append(f"{rel}: math present but not typeset by MathJax")
    prose = page.evaluate(_VISIBLE_PROSE)
    for raw in ("$$", "\\begin{", "\\(", "\\["):
        if raw in prose:
            problems.append(f"{rel}: raw TeX {raw!r} left in the page")
    if page.locator("mjx-merror").count():
        problems.append(f"{rel}: MathJax errors: {page.locator('mjx-merror').first.inner_text()}")
    broken_imgs = page.evaluate("() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    if broken_imgs:
        problems.append(f"{rel}: images that did not load {broken_imgs[:3]}")
    if rel in NUMBERED_PAGES:
        problems += _numbered_equations_and_figures(page, rel)
    if rel in EXPLORER_PAGES:
        problems += _explorers_move(page, rel)
    # after the sliders moved: a frame fetched from the network or a script error while moving counts too
    external = [u for u in requests if not (u.startswith(server) or u.startswith("data:") or u.startswith("blob:"))]
    if external:
        problems.append(f"{rel}: network requests {external[:5]}")
    if errors:
        problems.append(f"{rel}: JavaScript or HTTP errors {errors[:3]}")
    page.close()
    assert not problems, "\n".join(problems)


def test_numbered_and_explorer_pages_are_tested(book):
    "The page test above runs on every page listed for the numbering and explorer checks."
    pages = {p.relative_to(HTML).as_posix() for p in _pages()}
    assert set(NUMBERED_PAGES) <= pages and set(EXPLORER_PAGES) <= pages
