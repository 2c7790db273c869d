"""Small Sphinx fixes for this book, loaded through `local_extensions` in book/_config.yml.

sphinx-thebe 0.3.1 registers its inline configuration script once per `env-before-read-docs` event, which fires more
than once in a Jupyter Book 1 build; the second copy re-declares `const THEBE_JS_URL` and the browser reports a
JavaScript error on every page. Keep only the first copy of each identical inline script.

Notebook execution: `reliable_execution.install()` removes the lost-wake-up stall of nbclient + jupyter_client (see
that module) before myst-nb executes the first notebook.

Toolbox numbering: the toolbox chapters (nbs/A1_toy ... nbs/A6_cli) sit in an unnumbered part, so Sphinx numbers
their equations and exercises with one counter shared by all of them, and a chapter citing a toolbox equation read
"eq. (16)". After Sphinx assigns the numbers, each toolbox page's equations, figures and exercises are renumbered
A1.1, A1.2, ... from the page's own prefix (the file name up to the underscore), in their original order; references
use the same table, so they follow.

nbdev directives: the first lines of a code cell that start with `#|` (`#| export`, `#| hide`, ...) tell nbdev what to
export; a reader of the book does not need them, so they are removed from the rendered cell (the notebook keeps them).
"""
import re

from docutils import nodes

import reliable_execution

TOOLBOX = re.compile(r"^nbs/(A\d+[a-z]?)_")


def _toolbox_numbers(app, env):
    "Renumber every enumerable of a toolbox page (A<k>_*.ipynb) as (A<k>, 1), (A<k>, 2), ... per kind."
    for docname, kinds in env.toc_fignumbers.items():
        m = TOOLBOX.match(docname)
        if not m:
            continue
        for figtype, numbers in kinds.items():
            for k, fid in enumerate(sorted(numbers, key=lambda i: numbers[i]), start=1):
                numbers[fid] = (m.group(1), k)
    return []


_DIRECTIVE = re.compile(r"^#\|.*$")


def _strip_nbdev_directives(app, doctree):
    "Drop the leading `#| ...` lines of every rendered code cell's source."
    for block in list(doctree.findall(nodes.literal_block)):
        parent = block.parent
        if not (isinstance(parent, nodes.container) and "cell_input" in parent.get("classes", [])):
            continue
        lines = block.astext().split("\n")
        k = 0
        while k < len(lines) and _DIRECTIVE.match(lines[k]):
            k += 1
        if k == 0:
            continue
        text = "\n".join(lines[k:]).lstrip("\n")
        block.replace(block.children[0], nodes.Text(text)) if block.children else block.append(nodes.Text(text))
        for extra in block.children[1:]:
            block.remove(extra)
        block.rawsource = text


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts, seen = context.get("script_files"), set()
    if not scripts:
        return
    kept = []
    for js in scripts:
        body = getattr(js, "attributes", {}).get("body") if not isinstance(js, str) else None
        key = ("body", body) if body else ("file", str(js))
        if key in seen:
            continue
        seen.add(key)
        kept.append(js)
    scripts[:] = kept


def setup(app):
    reliable_execution.install()
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("env-get-updated", _toolbox_numbers, priority=900)
    app.connect("doctree-read", _strip_nbdev_directives)   # after the toctree collector numbers them
    return {"parallel_read_safe": True, "parallel_write_safe": True}
