"""Every measured number that the book's prose quotes comes from the cell that measured it.

A number typed into a markdown cell drifts from the computation as soon as a seed, a sample size or a network changes
(chapter 13 once said 8 %, 0.88 and 94 % while its own tables printed 10.5 %, 0.857 and 92 %). So the prose of every
notebook may quote a decimal number, a percentage or a duration in seconds only
- through myst-nb's glue role, {glue:text}`name:.2f`, filled in by the build from `sde_diffusion.core.glue(name, x)`
  in a code cell of the same notebook; or
- listed in the notebook's metadata `typed_numbers`, {"0.16": "why it is typed"}: a parameter of the setup, a closed
  form, a value from the literature, or a result the text says came from another run.
Numbers inside math ($...$), code and roles are not prose. The check is on the notebook sources, no build needed;
the build itself fails (-W) on a glue name that no cell recorded.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))

# decimals (0.16, 1,438.5), percentages (94 %, 2.5%), durations with a space (651 s, 0.43 s; not "the 7s"); not integers (sizes, steps, seeds)
NUMBER = re.compile(r"(?<![\w.{`$\-−/^,])(\d+(?:\.\d+)?\s?%|\d+(?:\.\d+)?\s(?:s|ms|min)\b|\d{1,3}(?:,\d{3})+\.\d+|\d+\.\d+)"
                    r"(?![\w.]\d)")
GLUE = re.compile(r"\{glue(?::text)?\}`([^`:]+)(?::[^`]*)?`")


def prose(markdown: str) -> str:
    "The markdown with code fences, directive options, math, roles and code spans blanked out: what a reader reads as text."
    md = re.sub(r"^(```+|~~~+)(?!\{)[^\n]*\n.*?^\1\s*$", " ", markdown, flags=re.S | re.M)   # plain code blocks
    md = re.sub(r"^:[a-z-]+:.*$", " ", md, flags=re.M)            # directive options (:label:, :class:)
    md = re.sub(r"\$\$.*?\$\$", " ", md, flags=re.S)              # display math
    md = re.sub(r"(?<!\\)\$[^$]*\$", " ", md)                     # inline math
    md = re.sub(r"\{[a-z:-]+\}`[^`]*`", " ", md)                  # roles: {eq}, {doc}, {cite}, {glue:text}
    md = re.sub(r"``.*?``|`[^`]*`", " ", md)                      # code spans
    md = re.sub(r"\]\([^)]*\)", "]", md)                          # link targets
    md = re.sub(r"(?i)\b(eqs?\.|section|chapter|appendix|§)\s*\(?\d+(\.\d+)*\)?", " ", md)   # cross-references
    return md


def typed_numbers(nb: dict) -> list[tuple[int, str, str]]:
    "(cell index, number as written, context) of every number in the notebook's prose."
    found = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            text = prose("".join(cell["source"]))
            for m in NUMBER.finditer(text):
                found.append((i, re.sub(r"\s", "", m.group(1)), " ".join(text[max(0, m.start() - 40):m.end() + 20].split())))
    return found


def glued_names(nb: dict) -> tuple[set, set]:
    "Names the prose uses with {glue:text}, and names that code cells pass to glue(...)."
    used, recorded = set(), set()
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            used |= set(GLUE.findall(re.sub(r"``.*?``", " ", src)))   # not a role shown as code
        else:
            recorded |= set(re.findall(r"""\bglue\(\s*f?["']([A-Za-z_][A-Za-z0-9_]*)["']""", src))
    return used, recorded


def test_the_prose_scanner_finds_what_it_should():
    md = ("The sampler reaches 94 % (0.857 confidence) in 11 s with 1,438 digits; $0.25$ and `0.3` and "
          "{glue:text}`x:.2f` are not prose, nor eq. (3.2), nor 30 steps.\n```python\nx = 0.5\n```\n:label: ex-1.5\n")
    found = [n for _, n, _ in typed_numbers({"cells": [{"cell_type": "markdown", "source": [md]}]})]
    assert found == ["94%", "0.857", "11s"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_quoted_number_has_a_source(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    allowed = nb["metadata"].get("typed_numbers", {})
    assert all(isinstance(v, str) and v.strip() for v in allowed.values()), \
        f"{path.name}: every entry of metadata.typed_numbers needs a reason"
    unsourced = [(i, n, ctx) for i, n, ctx in typed_numbers(nb) if n not in allowed]
    assert not unsourced, (f"{path.name}: numbers typed into the prose with no source. Glue them from the cell that "
                           "computes them ({glue:text}`name:.2f`, sde_diffusion.core.glue), or list them in the "
                           "notebook's metadata typed_numbers with the reason they are typed:\n"
                           + "\n".join(f"  cell {i}: {n!r} in '...{ctx}...'" for i, n, ctx in unsourced))
    written = {n for _, n, _ in typed_numbers(nb)}
    stale = sorted(set(allowed) - written)
    assert not stale, f"{path.name}: metadata.typed_numbers lists numbers the prose no longer has: {stale}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_glued_name_is_recorded_by_a_cell(path):
    "The build fails on a missing glue name too, but only after executing; this finds it in a second."
    used, recorded = glued_names(json.loads(path.read_text(encoding="utf-8")))
    assert used <= recorded, f"{path.name}: the prose uses glue names that no code cell records: {sorted(used - recorded)}"
