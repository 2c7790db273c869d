"""The built book's per-page links into the repository: the .ipynb / .md download link of every page, and the Colab and
Binder launch buttons of every notebook page, point at that page's own file, in the repository and branch of
book/_config.yml, and the file is there (in the built `_sources/` and in the working tree).

Reads the HTML under book/_build/html (no browser). Needs `make book` first; skipped when the book is not built,
unless SDE_REQUIRE_BOOK=1 (as in `make check-book`), which turns a missing book into a failure.
"""
import json
import os
import posixpath
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "book/_build/html"
CONFIG = yaml.safe_load((ROOT / "book/_config.yml").read_text(encoding="utf-8"))


def toc_documents() -> list[str]:
    "Every document of book/_toc.yml (root first), without suffix, e.g. 'nbs/04_sde', 'book/notation'."
    toc = yaml.safe_load((ROOT / "book/_toc.yml").read_text(encoding="utf-8"))
    docs = [toc["root"]]
    for part in toc.get("parts", []):
        docs += [c["file"] for c in part.get("chapters", [])]
    docs += [c["file"] for c in toc.get("chapters", [])]
    return [d.rsplit(".", 1)[0] if d.endswith((".ipynb", ".md")) else d for d in docs]


def source_of(doc: str) -> str:
    "The document's source file, relative to the repository root."
    for suffix in (".ipynb", ".md"):
        if (ROOT / (doc + suffix)).exists():
            return doc + suffix
    raise AssertionError(f"{doc} of book/_toc.yml has no .ipynb or .md source")


class _Anchors(HTMLParser):
    def __init__(self):
        super().__init__()
        self.anchors = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            a = dict(attrs)
            if a.get("href"):
                self.anchors.append(a)


def anchors(page: Path) -> list[dict]:
    p = _Anchors()
    p.feed(page.read_text(encoding="utf-8"))
    return p.anchors


def _repo() -> tuple[str, str, str]:
    "(owner, name, branch) of the repository the book links to."
    url = CONFIG["repository"]["url"].rstrip("/")
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.netloc == "github.com", f"repository.url must be a GitHub URL, got {url}"
    owner, name = parts.path.strip("/").split("/")
    return owner, name.removesuffix(".git"), CONFIG["repository"].get("branch", "main")


def _page(doc: str) -> Path:
    page = HTML / (doc + ".html")
    if not page.exists():
        if os.environ.get("SDE_REQUIRE_BOOK"):
            pytest.fail(f"{page.relative_to(ROOT)} is not built: run `make book`")
        pytest.skip(f"{page.relative_to(ROOT)} is not built (run `make book`)")
    return page


def _with_class(links: list[dict], cls: str) -> list[str]:
    return [a["href"] for a in links if cls in a.get("class", "").split()]


@pytest.mark.parametrize("doc", toc_documents())
def test_download_link_is_the_page_source(doc):
    page, src = _page(doc), source_of(doc)
    hrefs = _with_class(anchors(page), "btn-download-source-button")
    assert len(hrefs) == 1, f"{doc}: {len(hrefs)} source download links"
    target = posixpath.normpath(posixpath.join(posixpath.dirname(doc), hrefs[0]))
    assert target == f"_sources/{src}", f"{doc}: the download link points at {target}, the page's source is {src}"
    built = HTML / target
    assert built.exists(), f"{doc}: the download link's target {target} is not in the built book"
    if src.endswith(".ipynb"):
        nb = json.loads(built.read_text(encoding="utf-8"))
        assert nb["nbformat"] == 4 and nb["cells"], f"{target} is not a notebook"


@pytest.mark.parametrize("doc", [d for d in toc_documents() if source_of(d).endswith(".ipynb")])
def test_launch_buttons_open_this_notebook_in_the_repository(doc):
    owner, name, branch = _repo()
    page, src = _page(doc), source_of(doc)
    links = anchors(page)
    launch = CONFIG["launch_buttons"]
    by_title = {a.get("title", ""): a["href"] for a in links}

    colab = by_title.get("Launch on Colab")
    assert colab, f"{doc}: no Colab launch button"
    want = f"{launch['colab_url'].rstrip('/')}/github/{owner}/{name}/blob/{branch}/{src}"
    assert colab == want, f"{doc}: Colab opens {colab}, expected {want}"

    binder = by_title.get("Launch on Binder")
    assert binder, f"{doc}: no Binder launch button"
    u = urlsplit(binder)
    assert f"{u.scheme}://{u.netloc}" == launch["binderhub_url"].rstrip("/")
    assert u.path == f"/v2/gh/{owner}/{name}/{branch}", f"{doc}: Binder builds {u.path}"
    prefix = "lab/tree/" if launch.get("notebook_interface") == "jupyterlab" else "tree/"
    assert parse_qs(u.query).get("urlpath") == [prefix + src], f"{doc}: Binder opens {parse_qs(u.query)}"

    assert (ROOT / src).exists(), f"{doc}: the launch buttons open {src}, which is not in the repository"


@pytest.mark.parametrize("doc", toc_documents())
def test_repository_and_issue_buttons(doc):
    owner, name, _ = _repo()
    links = anchors(_page(doc))
    repo = _with_class(links, "btn-source-repository-button")
    assert repo == [f"https://github.com/{owner}/{name}"], f"{doc}: repository button {repo}"
    issues = _with_class(links, "btn-source-issues-button")
    assert len(issues) == 1 and issues[0].startswith(f"https://github.com/{owner}/{name}/issues/new?"), issues


def test_binder_environment_exists_for_the_launch_buttons():
    "Binder builds the repository from binder/ (without it, it would install nothing and every notebook would fail)."
    assert (ROOT / "binder/requirements.txt").exists() and (ROOT / "binder/postBuild").exists()
