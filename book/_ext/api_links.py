"""Link the package's names in the chapters' inline code to their entries in the API reference (book/api.md).

Loaded through `local_extensions` in book/_config.yml. Nothing is written into the notebooks: after Sphinx has
resolved a page's references (`doctree-resolved`), every inline literal (`sample`, a single-backtick span in the
markdown) that names a public object of `sde_diffusion` is wrapped in a link to that object's entry of book/api.md.

What is linked. The names and their labels are read from book/api.md itself (`(api-<module>.<Name>)=` followed by
its `### \\`Name\\`` heading, as tools/api_reference.py writes them), so a link exists exactly when the entry does.
The whole literal must be one of (`resolve` below):

- a public name: `sample`, `VPSDE`;
- the same, qualified by its module or by the package: `sampling.sample`, `sde_diffusion.sampling.sample`;
  `sde_diffusion.sampling` alone links to the module's section (a bare module name, `sde`, is not linked: in the
  prose it is more often a variable or a method, `SDE.sde`);
- a call of it, whatever the arguments: `sample(...)`, `UNet(num_classes=K)`;
- a class's documented method, property or field, also one inherited from a documented base class, or a call of
  it on the class or on an instance built in place: `VPSDE.marginal_prob` (links to `SDE`, whose entry documents
  `marginal_prob`), `VPSDE(0.1, 20, N=1000).discrete_betas()`, `TrainResult.written`.

Anything else is left alone: an expression (`x + 1`), a name qualified by something that is not the package
(`sklearn.datasets.load_digits`, `sde.marginal_prob` with `sde` a variable), a member the entry does not document.

Where. Only literals of the prose: not code cells or outputs (those are literal blocks, not literals), not a
literal that is already a link or inside one (`{doc}`, `{ref}`), not one in a title (a heading, the page's TOC and
the right-hand "contents" would all carry the link), and not one inside the entry it would link to (on the API page
an entry does not link to itself; other entries' names there do link, as autodoc does).

Collisions. A short name public in two modules links to the one of the page's own module (the notebook's
`#| default_exp`; on the API page, the module of the section the literal sits in), and is left alone otherwise;
the module-qualified form always links. A literal right after a possessive (myst-nb's `glue`) names someone else's
object and is not linked. A page where a package name means something else in backticks (the toolbox page of the
command line, where `train` and `sample` are the commands) lists those literals in `api_links_ignore` (a Sphinx
config value, set in book/_config.yml: {docname: [literal, ...]}); their qualified forms still link.

The links are made when a page is written, so an incremental build that re-reads book/api.md writes every page
again (`env-get-updated`), and no page keeps a link to an entry that was renamed.

The link carries the classes of a Sphinx cross-reference to Python (`xref py py-obj`), so the theme draws it as it
draws any other code link, and a tooltip with the full name (`sde_diffusion.sampling.sample`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "sde_diffusion"
API_DOC = "book/api"

# --- the API page's entries (pure functions: tests/test_api_links.py calls them without Sphinx) --------------------
_ENTRY = re.compile(r"^\((api-[\w.]+)\)=\n(#{2,3}) `([^`]+)`[ \t]*$", re.M)
_CODE = re.compile(r"```python\n(.*?)\n```", re.S)
_MEMBER = re.compile(r"^- `(\w+)", re.M)               # "- `marginal_prob(x0: Tensor, ...)`", a method or property
_FIELD = re.compile(r"^\| `\**(\w+)` \|", re.M)        # "| `beta_min` | `float` | ..." rows of the argument/field table


@dataclass(frozen=True)
class Entry:
    label: str                          # the MyST label, as written in api.md: api-sde.VPSDE
    module: str                         # short module name: sde
    name: str                           # public name; "" for a module's section
    kind: str                           # "module", "class" or "object" (functions and constants)
    members: frozenset = frozenset()    # documented methods, properties, fields and __init__ arguments (classes)
    bases: tuple = ()                   # names of base classes as the entry lists them

    @property
    def qualname(self) -> str:
        return f"{PACKAGE}.{self.module}" + (f".{self.name}" if self.name else "")


@dataclass
class ApiIndex:
    entries: dict = field(default_factory=dict)     # label -> Entry
    modules: dict = field(default_factory=dict)     # short module -> its section's Entry
    by_name: dict = field(default_factory=dict)     # public name -> [Entry, ...] (one per module that exports it)

    def add(self, e: Entry) -> None:
        self.entries[e.label] = e
        if e.kind == "module":
            self.modules[e.module] = e
        else:
            self.by_name.setdefault(e.name, []).append(e)

    def base_entry(self, name: str, module: str) -> Entry | None:
        "The entry of a base class named in `# bases:` (`SDE`, or `abc.ABC`: not ours), preferring the same module."
        cands = [e for e in self.by_name.get(name.rsplit(".", 1)[-1], []) if e.kind == "class"]
        if "." in name and not name.startswith(PACKAGE + "."):
            return None
        same = [e for e in cands if e.module == module]
        return (same or cands or [None])[0]

    def member_owner(self, entry: Entry, member: str, _seen=None) -> Entry | None:
        "The entry documenting `entry.member`: the class itself, else its bases depth first (Python's MRO for these)."
        if member in entry.members:
            return entry
        seen = _seen or set()
        seen.add(entry.label)
        for b in entry.bases:
            base = self.base_entry(b, entry.module)
            if base is not None and base.label not in seen:
                owner = self.member_owner(base, member, seen)
                if owner is not None:
                    return owner
        return None


def parse_api_page(text: str) -> ApiIndex:
    "The entries of book/api.md as tools/api_reference.py writes them."
    index = ApiIndex()
    matches = list(_ENTRY.finditer(text))
    for k, m in enumerate(matches):
        label, level, heading = m.group(1), m.group(2), m.group(3)
        body = text[m.end(): matches[k + 1].start() if k + 1 < len(matches) else len(text)]
        rest = label[len("api-"):]
        if level == "##":
            module = rest
            if heading != f"{PACKAGE}.{module}":
                continue
            index.add(Entry(label, module, "", "module"))
            continue
        module, _, name = rest.partition(".")
        if name != heading or not name:
            continue
        code = _CODE.search(body)
        head = code.group(1) if code else ""
        kind = "class" if re.match(r"(class|exception) ", head) else "object"
        members, bases = frozenset(), ()
        if kind == "class":
            members = frozenset(_MEMBER.findall(body)) | frozenset(_FIELD.findall(body))
            b = re.search(r"# bases: ([^\n]+)", head)
            bases = tuple(x.strip() for x in b.group(1).split(",")) if b else ()
        index.add(Entry(label, module, name, kind, members, bases))
    return index


_IDENT = re.compile(r"[A-Za-z_]\w*")


def split_chain(text: str) -> list[tuple[str, bool]] | None:
    """`a.b(...).c` -> [("a", False), ("b", True), ("c", False)]: a dotted chain of identifiers, each optionally
    called (balanced parentheses, strings skipped). None when the text is anything else."""
    out, pos, n = [], 0, len(text)
    while True:
        m = _IDENT.match(text, pos)
        if not m:
            return None
        pos, called = m.end(), False
        if pos < n and text[pos] == "(":
            depth, quote = 0, None
            while pos < n:
                c = text[pos]
                if quote:
                    if c == "\\":
                        pos += 1
                    elif c == quote:
                        quote = None
                elif c in "'\"":
                    quote = c
                elif c in "([{":
                    depth += 1
                elif c in ")]}":
                    depth -= 1
                    if depth == 0:
                        break
                pos += 1
            if pos >= n:
                return None           # unbalanced
            pos += 1
            called = True
        out.append((m.group(0), called))
        if pos == n:
            return out
        if text[pos] != ".":
            return None
        pos += 1


def resolve(literal: str, index: ApiIndex, page_module: str | None = None) -> Entry | None:
    "The entry an inline literal names (see the module docstring for the rule), or None."
    chain = split_chain(literal.strip())
    if not chain:
        return None
    names = [n for n, _ in chain]
    calls = [c for _, c in chain]
    module, i = None, 0
    if names[0] == PACKAGE:
        if calls[0] or len(names) < 2 or calls[1] or names[1] not in index.modules:
            return None
        module, i = names[1], 2
        if len(names) == 2:
            return index.modules[module]
    elif len(names) > 1 and not calls[0] and names[0] in index.modules \
            and any(e.module == names[0] for e in index.by_name.get(names[1], [])):
        module, i = names[0], 1
    cands = [e for e in index.by_name.get(names[i], []) if module is None or e.module == module]
    if len(cands) > 1:
        cands = [e for e in cands if e.module == page_module]
    if len(cands) != 1:
        return None
    entry, rest = cands[0], names[i + 1:]
    if not rest:
        return entry
    if len(rest) > 1 or entry.kind != "class":
        return None
    return index.member_owner(entry, rest[0])


_POSSESSIVE = re.compile(r"(\w[\w.-]*)['\u2019]s\s+$")
_OURS = {"package", "course", "book", "chapter", "page", "module", "toolbox", PACKAGE}


def after_possessive(preceding: str, index: ApiIndex | None = None) -> bool:
    "True when the text right before a literal ends with someone's possessive (\"myst-nb's \"): not our object."
    m = _POSSESSIVE.search(preceding)
    if not m:
        return False
    word = m.group(1)
    if word.lower() in _OURS:
        return False
    return not (index is not None and (word in index.by_name or word in index.modules))


_DEFAULT_EXP = re.compile(r"#\|\s*default_exp\s+([\w.]+)")


def notebook_module(path: Path) -> str | None:
    "The module a notebook exports to (its `#| default_exp`), read from the file's text."
    try:
        m = _DEFAULT_EXP.search(Path(path).read_text(encoding="utf-8"))
    except OSError:
        return None
    return m.group(1) if m else None


# --- Sphinx ----------------------------------------------------------------------------------------------------------
_CACHE: dict = {}


def _index(env) -> ApiIndex | None:
    docname = env.config.api_links_page
    if docname not in env.found_docs:
        return None
    path = Path(env.doc2path(docname))
    key = (str(path), path.stat().st_mtime_ns)
    if _CACHE.get("key") != key:
        _CACHE.update(key=key, index=parse_api_page(path.read_text(encoding="utf-8")), modules={})
    return _CACHE["index"]


def _page_module(env, docname: str) -> str | None:
    modules = _CACHE.setdefault("modules", {})
    if docname not in modules:
        path = Path(env.doc2path(docname))
        modules[docname] = notebook_module(path) if path.suffix == ".ipynb" else None
    return modules[docname]


def _excluded(node) -> bool:
    "Inside a link, a title, or a node the reader does not see as prose."
    from docutils import nodes
    from sphinx import addnodes
    p = node.parent
    while p is not None:
        if isinstance(p, (nodes.reference, addnodes.pending_xref, addnodes.download_reference, nodes.title,
                          nodes.subtitle, nodes.rubric, nodes.raw, nodes.literal_block, nodes.target)):
            return True
        if "title" in type(p).__name__.lower():       # sphinx-exercise's and other directives' title nodes
            return True
        p = p.parent
    return "xref" in node.get("classes", [])


def _sections(node):
    "The ids of the sections enclosing `node`, innermost first."
    from docutils import nodes
    p = node.parent
    while p is not None:
        if isinstance(p, nodes.section):
            yield p.get("ids", [])
        p = p.parent


def _preceding_text(node) -> str:
    from docutils import nodes
    parent = node.parent
    k = parent.index(node)
    prev = parent[k - 1] if k > 0 else None
    return prev.astext() if isinstance(prev, nodes.Text) else ""


def link_literals(app, doctree, docname: str) -> int:
    "Wrap the page's inline literals that name a public object in links to its API entry. Returns how many."
    from docutils import nodes
    from sphinx.util.nodes import make_refnode
    env = app.builder.env
    index = _index(env)
    if index is None:
        return 0
    labels = env.get_domain("std").labels              # lower-cased label -> (docname, id, section name)
    by_id = {}
    if docname == env.config.api_links_page:
        by_id = {labels[e.label.lower()][1]: e for e in index.entries.values() if e.label.lower() in labels}
    ignore = set(env.config.api_links_ignore.get(docname, ()))
    page_module = _page_module(env, docname)
    made = 0
    for lit in list(doctree.findall(nodes.literal)):
        text = lit.astext()
        if text in ignore or _excluded(lit):
            continue
        module = page_module
        enclosing = list(_sections(lit))
        if by_id:    # the API page: the module of the entry or module section the literal sits in
            module = next((by_id[i].module for ids in enclosing for i in ids if i in by_id), None)
        entry = resolve(text, index, module)
        if entry is None or entry.label.lower() not in labels:
            continue
        if after_possessive(_preceding_text(lit), index):
            continue
        todoc, target, _ = labels[entry.label.lower()]
        if todoc == docname and any(target in ids for ids in enclosing):
            continue                                    # inside the entry it would link to
        new = lit.deepcopy()
        new["classes"] = list(dict.fromkeys([*lit.get("classes", []), "xref", "py", "py-obj"]))
        ref = make_refnode(app.builder, docname, todoc, target, new, title=entry.qualname)
        ref["classes"].append("api-link")
        lit.replace_self(ref)
        made += 1
    return made


def _on_resolved(app, doctree, docname):
    link_literals(app, doctree, docname)


def _before_read(app, env, docnames):
    app._api_links_page_reread = app.config.api_links_page in docnames


def _rewrite_all(app, env):
    "The links are made when a page is written: when the API page changed, write every page again (no re-reading)."
    return sorted(env.found_docs) if getattr(app, "_api_links_page_reread", False) else []


def setup(app):
    app.add_config_value("api_links_page", API_DOC, "env")
    app.add_config_value("api_links_ignore", {}, "env")
    app.connect("env-before-read-docs", _before_read)
    app.connect("env-get-updated", _rewrite_all)
    app.connect("doctree-resolved", _on_resolved)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
