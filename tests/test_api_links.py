"""The chapters' inline code links to the API reference (book/_ext/api_links.py).

The matching rule is tested as pure functions (fast, no Sphinx). The built book is checked when there is one, as in
tests/test_book.py: skipped when the book is not built (or was built before book/api.md existed), unless
SDE_REQUIRE_BOOK=1, which turns that into a failure. SDE_BOOK_HTML points at another build's html folder.
"""
import functools
import importlib.util
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("SDE_BOOK_HTML") or ROOT / "book" / "_build" / "html")


def _load():
    spec = importlib.util.spec_from_file_location("api_links", ROOT / "book" / "_ext" / "api_links.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


al = _load()

# A small API page in the format tools/api_reference.py writes: two modules, a name public in both, a class hierarchy.
FAKE = """\
# API reference

(api-alpha)=
## `sde_diffusion.alpha`

(api-alpha.Base)=
### `Base`

```python
class Base(N: int = 1000)  # bases: abc.ABC
```

| argument | type | default | description |
| --- | --- | --- | --- |
| `N` | `int` | `1000` | steps |

**Methods and properties**

- `T: float` (property)

  End time.

- `marginal_prob(x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]`

  Mean and std.

  - `x0`: data

(api-alpha.Child)=
### `Child`

```python
class Child(beta: float = 0.1)  # bases: Base
```

**Methods and properties**

- `discrete_betas(dtype=None) -> Tensor`

(api-alpha.shared)=
### `shared`

```python
def shared(x) -> Tensor
```

(api-beta)=
## `sde_diffusion.beta`

(api-beta.shared)=
### `shared`

```python
def shared(y) -> Tensor
```

(api-beta.sample)=
### `sample`

```python
def sample(score_fn, shape) -> Tensor
```
"""


@pytest.fixture(scope="module")
def fake():
    return al.parse_api_page(FAKE)


def _label(literal, index, module=None):
    e = al.resolve(literal, index, module)
    return e.label if e else None


def test_parse_entries(fake):
    assert set(fake.modules) == {"alpha", "beta"}
    assert {e.label for e in fake.by_name["shared"]} == {"api-alpha.shared", "api-beta.shared"}
    child, base = fake.entries["api-alpha.Child"], fake.entries["api-alpha.Base"]
    assert child.kind == base.kind == "class" and fake.entries["api-beta.sample"].kind == "object"
    assert child.bases == ("Base",) and base.members == {"T", "marginal_prob", "N"}   # nested "- `x0`" is not one


@pytest.mark.parametrize("literal, label", [
    ("sample", "api-beta.sample"),
    ("sample(...)", "api-beta.sample"),
    ("sample(score_fn, (64, 2), steps=f(1), name='a)b')", "api-beta.sample"),
    ("beta.sample", "api-beta.sample"),
    ("sde_diffusion.beta.sample", "api-beta.sample"),
    ("sde_diffusion.beta", "api-beta"),
    ("Child", "api-alpha.Child"),
    ("Child.discrete_betas", "api-alpha.Child"),
    ("Child(0.1).discrete_betas()", "api-alpha.Child"),
    ("Child.marginal_prob", "api-alpha.Base"),        # inherited: the entry that documents it
    ("Child.T", "api-alpha.Base"),
    ("Base.N", "api-alpha.Base"),                      # an __init__ argument / field of the table
    ("alpha.Child.marginal_prob(x0, t)", "api-alpha.Base"),
    # not names of the package
    ("beta", None),                                    # a bare module name: a variable more often than not
    ("sde_diffusion", None),
    ("sklearn.datasets.sample", None),                 # someone else's `sample`
    ("x.sample", None),                                # a method of a variable
    ("alpha.sample", None),                            # not exported by that module
    ("sample(...).samples", None),                     # an attribute of a result, not documented here
    ("Child.nothing", None),
    ("Child.discrete_betas.dtype", None),
    ("sample + 1", None),
    ("sample(", None),
    ("sample[0]", None),
    ("shared", None),                                  # public in two modules, and no page module to choose
])
def test_resolve(fake, literal, label):
    assert _label(literal, fake) == label


def test_ambiguous_name_follows_the_page_module(fake):
    assert _label("shared", fake, "alpha") == "api-alpha.shared"
    assert _label("shared", fake, "beta") == "api-beta.shared"
    assert _label("shared", fake, "gamma") is None
    assert _label("beta.shared", fake, "alpha") == "api-beta.shared"   # qualified: always that one
    assert _label("sample", fake, "alpha") == "api-beta.sample"        # unique: from any page


def test_possessive(fake):
    assert al.after_possessive("the same as myst-nb's ", fake)
    assert al.after_possessive("as in torch\u2019s ", fake)
    assert not al.after_possessive("the package's ", fake)
    assert not al.after_possessive("Child's ", fake)                   # our own class's member
    assert not al.after_possessive("with ", fake)
    assert not al.after_possessive("", fake)


def test_real_api_page_is_parsed_whole():
    "Every entry label of the committed book/api.md is found, with the name its heading shows."
    text = (ROOT / "book" / "api.md").read_text(encoding="utf-8")
    index = al.parse_api_page(text)
    assert set(index.entries) == set(re.findall(r"^\((api-[\w.]+)\)=$", text, re.M))
    for name, entries in index.by_name.items():
        for e in entries:
            assert al.resolve(f"sde_diffusion.{e.module}.{name}", index) is e
    vpsde = al.resolve("VPSDE.marginal_prob", index)
    assert vpsde is not None and vpsde.name == "SDE"


def test_notebook_module(tmp_path):
    nb = tmp_path / "x.ipynb"
    nb.write_text('{"cells": [{"source": ["#| default_exp sampling\\n"]}]}', encoding="utf-8")
    assert al.notebook_module(nb) == "sampling"
    assert al.notebook_module(tmp_path / "missing.ipynb") is None


# --- the built book --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def book():
    if not (HTML / "nbs" / "index.html").exists() or not (HTML / "book" / "api.html").exists():
        if os.environ.get("SDE_REQUIRE_BOOK"):
            pytest.fail(f"the book with its API reference is not built in {HTML}: run `make book` first")
        pytest.skip("the book with its API reference is not built (run `make book`)")
    return HTML


class _Page(HTMLParser):
    "Links and inline code of a page, each with where it sits (heading, link, code block)."
    def __init__(self):
        super().__init__()
        self.ids, self.links, self.codes = set(), [], []
        self.depth = {"h": 0, "a": 0, "pre": 0}
        self._code = None
        self._last = ""         # text right before the current element
        self._href = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if re.fullmatch(r"h[1-6]", tag):
            self.depth["h"] += 1
        elif tag == "pre":
            self.depth["pre"] += 1
        elif tag == "a":
            self.depth["a"] += 1
            self._href = a.get("href")
            self.links.append(dict(href=a.get("href") or "", classes=(a.get("class") or "").split(),
                                   heading=self.depth["h"] > 0, text=""))
        elif tag == "code" and "literal" in (a.get("class") or "").split() and not self.depth["pre"]:
            self._code = dict(text="", heading=self.depth["h"] > 0, href=self._href if self.depth["a"] else None,
                              before=self._last)

    def handle_endtag(self, tag):
        if re.fullmatch(r"h[1-6]", tag):
            self.depth["h"] -= 1
        elif tag == "pre":
            self.depth["pre"] -= 1
        elif tag == "a":
            self.depth["a"] -= 1
            self._href = None
        elif tag == "code" and self._code is not None:
            self.codes.append(self._code)
            self._code = None

    def handle_data(self, data):
        if self._code is not None:
            self._code["text"] += data
        else:
            self._last = data
        if self.depth["a"] and self.links:
            self.links[-1]["text"] += data


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _pages(html: Path):
    return sorted(p for p in html.rglob("*.html")
                  if "_static" not in p.parts and "_sources" not in p.parts
                  and p.name not in ("genindex.html", "search.html"))


def _api_links(page: _Page):
    return [l for l in page.links if "api-link" in l["classes"]]


def test_chapter_links_its_names(book):
    page = _parse(book / "nbs" / "09_sampling.html")
    hrefs = {l["text"]: l["href"] for l in _api_links(page)}
    assert hrefs.get("sample") == "../book/api.html#api-sampling-sample", hrefs
    assert hrefs.get("ode_sample") == "../book/api.html#api-sampling-ode-sample", hrefs


def test_every_api_link_resolves(book):
    api_ids = _parse(book / "book" / "api.html").ids
    broken, count = [], 0
    for path in _pages(book):
        page = _parse(path)
        for link in _api_links(page):
            count += 1
            url = urlparse(link["href"])
            target = (path.parent / unquote(url.path)).resolve() if url.path else path
            if target == path.resolve():
                ok = url.fragment in page.ids
            else:
                ok = target == (book / "book" / "api.html").resolve() and url.fragment in api_ids
            if not ok:
                broken.append(f"{path.relative_to(book)} -> {link['href']} ({link['text']})")
    assert count, "no page links to the API reference: is book/_ext/api_links.py registered in book/_config.yml?"
    assert not broken, "API links to no entry:\n" + "\n".join(broken)


def test_no_api_link_in_headings(book):
    bad = [f"{p.relative_to(book)}: {l['text']}" for p in _pages(book) for l in _api_links(_parse(p)) if l["heading"]]
    assert not bad, "API links inside headings:\n" + "\n".join(bad)


def test_every_public_name_in_the_prose_is_linked(book):
    "Each chapter's inline code that the rule resolves is a link (what the extension could have missed: a node type)."
    index = al.parse_api_page((ROOT / "book" / "api.md").read_text(encoding="utf-8"))
    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text(encoding="utf-8"))
    ignore = config["sphinx"]["config"].get("api_links_ignore", {})
    missing, checked = [], 0
    for path in sorted((book / "nbs").glob("*.html")) + [book / "book" / "notation.html"]:
        doc = path.relative_to(book).with_suffix("").as_posix()
        nb = ROOT / (doc + ".ipynb")
        module = al.notebook_module(nb) if nb.exists() else None
        for code in _parse(path).codes:
            text = " ".join(code["text"].split())
            if code["heading"] or text in ignore.get(doc, ()) or al.resolve(text, index, module) is None:
                continue
            if code["href"] is None and al.after_possessive(code["before"], index):
                continue
            checked += 1
            if code["href"] is None:
                missing.append(f"{doc}: `{text}`")
    assert checked
    assert not missing, "public names shown as code without a link to their entry:\n" + "\n".join(missing)


def test_api_entries_do_not_link_to_themselves(book):
    "On the API page, an entry's own name in its docstring stays plain code; other entries' names link."
    text = (book / "book" / "api.html").read_text(encoding="utf-8")
    entries = links = 0
    for chunk in text.split("<section id=")[1:]:
        m = re.match(r'"[^"]*">\s*<span id="(api-[^"]+)"></span>', chunk)
        if not m:
            continue
        entries += 1
        own = re.split(r"<section id=", chunk, maxsplit=1)[0]     # up to the first nested section
        hrefs = re.findall(r'<a class="api-link[^"]*"[^>]*href="#([^"]+)"', own)
        links += len(hrefs)
        assert m.group(1) not in hrefs, f"the entry {m.group(1)} links to itself"
    assert entries and links
