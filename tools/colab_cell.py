"""The first code cell of every notebook: on Colab (or anywhere the package is missing) it installs sde_diffusion from
the repository; where the package is installed (a clone after `make install`, Binder after binder/postBuild) it does
nothing. The book hides it (tag `remove-cell`). Every notebook carries the same cell, generated here.

    .venv/bin/python tools/colab_cell.py --check            # exit 1 and list the notebooks whose cell differs
    .venv/bin/python tools/colab_cell.py --fix              # rewrite them (each keeps its own `#| default_exp` line)
    .venv/bin/python tools/colab_cell.py --check nbs/04_sde.ipynb
    .venv/bin/python tools/colab_cell.py --print            # the canonical cell

The install URL is `repository.url` of book/_config.yml, the repository the book's launch buttons open.
The cell must come before every other code cell; the notebook's nbdev directives (`#| default_exp topic`) stay on top
of it, as nbdev expects them in the notebook's first code cell.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
TAG = "remove-cell"
MARKER = "# Colab / Binder: install the package when it is not importable"

TEMPLATE = '''\
{marker} (does nothing where it is installed).
try:
    import sde_diffusion
except ImportError:
    import subprocess, sys
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "git+{url}"])'''


def repository_url() -> str:
    "`repository.url` of book/_config.yml (no trailing slash, no .git)."
    import yaml
    cfg = yaml.safe_load((ROOT / "book/_config.yml").read_text(encoding="utf-8"))
    url = cfg["repository"]["url"].rstrip("/")
    return url[:-4] if url.endswith(".git") else url


def canonical() -> str:
    "The cell's code, without the notebook's own nbdev directives."
    return TEMPLATE.format(marker=MARKER, url=repository_url())


def _split(source: str) -> tuple[list[str], str]:
    "(leading `#|` directive lines, the rest)."
    lines = source.split("\n")
    k = 0
    while k < len(lines) and lines[k].startswith("#|"):
        k += 1
    return lines[:k], "\n".join(lines[k:])


def _source(cell) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _to_lines(text: str) -> list[str]:
    "nbformat's list-of-lines form, as the notebooks are stored."
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def problems(nb: dict) -> list[str]:
    "What is wrong with a notebook's Colab cell (empty: nothing)."
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if not code:
        return []          # a prose-only notebook imports nothing
    first = code[0]
    directives, body = _split(_source(first))
    out = []
    if MARKER not in body:
        out.append("the first code cell is not the Colab cell")
        return out
    if body != canonical():
        out.append("the Colab cell's code differs from tools/colab_cell.py's")
    if TAG not in first.get("metadata", {}).get("tags", []):
        out.append(f"the Colab cell lacks the tag {TAG!r}")
    others = [c for c in code[1:] if MARKER in _source(c)]
    if others:
        out.append(f"{len(others)} more Colab cell(s) further down")
    return out


def fix(nb: dict, name: str) -> dict:
    "The notebook with its Colab cell made canonical (inserted before the first code cell when missing)."
    code = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    if not code:
        return nb
    i = code[0]
    first = nb["cells"][i]
    directives, body = _split(_source(first))
    if MARKER in body:
        first["source"] = _to_lines("\n".join(directives + [canonical()]))
        tags = first.setdefault("metadata", {}).setdefault("tags", [])
        if TAG not in tags:
            tags.append(TAG)
    else:       # a new cell on top; the nbdev directives move into it
        first["source"] = _to_lines(body)
        cell = {"cell_type": "code", "execution_count": None,
                "id": hashlib.sha1(f"colab:{name}".encode()).hexdigest()[:8],
                "metadata": {"tags": [TAG]}, "outputs": [], "source": _to_lines("\n".join(directives + [canonical()]))}
        if nb.get("nbformat_minor", 0) < 5 and "id" not in first:
            del cell["id"]
        nb["cells"].insert(i, cell)
    for c in [c for c in nb["cells"][i + 1:] if c["cell_type"] == "code" and MARKER in _source(c)]:
        nb["cells"].remove(c)
    return nb


def dump(nb: dict) -> str:
    "The notebooks' on-disk format (json indent 1, non-ASCII kept, trailing newline), as nbdev_clean writes it."
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--check", action="store_true")
    g.add_argument("--fix", action="store_true")
    g.add_argument("--print", action="store_true")
    ap.add_argument("notebooks", nargs="*", type=Path)
    a = ap.parse_args(argv)
    if a.print:
        print(canonical())
        return 0
    paths = [p.resolve() for p in a.notebooks] or sorted(NBS.glob("*.ipynb"))
    bad = 0
    for path in paths:
        raw = path.read_text(encoding="utf-8")
        nb = json.loads(raw)
        found = problems(nb)
        if not found:
            continue
        bad += 1
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        if a.fix:
            path.write_text(dump(fix(nb, path.name)), encoding="utf-8")
            print(f"fixed {rel}: " + "; ".join(found))
        else:
            print(f"{rel}: " + "; ".join(found))
    if a.check and bad:
        print(f"{bad} notebook(s) differ: run .venv/bin/python tools/colab_cell.py --fix", file=sys.stderr)
    elif a.check:
        print(f"the Colab cell is canonical in {len(paths)} notebook(s)")
    return 1 if (a.check and bad) else 0


if __name__ == "__main__":
    raise SystemExit(main())
