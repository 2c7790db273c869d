r"""Every measured number that the book's prose quotes comes from the cell that measured it.

A number typed into a markdown cell drifts from the computation as soon as a seed, a sample size or a network changes
(chapter 13 once said 8 %, 0.88 and 94 % while its own tables printed 10.5 %, 0.857 and 92 %). So the prose of every
notebook may quote a decimal number, a percentage or a duration in seconds only
- through myst-nb's glue role, {glue:text}`name:.2f`, filled in by the build from `sde_diffusion.core.glue(name, x)`
  in a code cell of the same notebook; or
- listed in the notebook's metadata `typed_numbers`, {"0.16": "why it is typed"}: a parameter of the setup, a closed
  form, a value from the literature, or a result the text says came from another run.
The same holds inside math ($...$, $$...$$ and {math} blocks), where a measured value is as easily typed by hand
($\Delta\log p \approx -0.20$): every decimal, percentage ($2\,\%$) and mantissa of a power of ten ($5\cdot 10^{-3}$)
is checked, except where the math itself says that it is set, not measured: a symbol set to it ($\beta_{\min} = 0.1$,
$t = 0, 0.1, 0.3$), a set or an interval it belongs to ($\alpha \in \{0.1, 0.5\}$, $t \in [0.01, 0.99]$), and the base of
a power ($0.25^2$), and a subscript ($p_{0.5}$). A measured value written as a setting would slip through: write it with \approx, or better glue it.
(Glue roles do not work inside math, so a glued value stands next to it: $\Delta\log p \approx$ {glue:text}`x:.2f`.)
Code and roles are not prose. The check is on the notebook sources, no build needed; the build itself fails (-W) on a
glue name that no cell recorded.
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
# in math: a mantissa times a power of ten (5\cdot 10^{-3}), a percentage (2\,\%), a decimal (0.06); not integers
MATH_NUMBER = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?\s*\\(?:cdot|times)\s*10\^\{?-?\d+\}?"
                         r"|\d+(?:\.\d+)?\s*(?:\\[,;:! ]|~)?\s*\\%|\d+\.\d+)(?![\w.]\d)")
# what the math says is set, not measured: "symbol = " followed by the number, or by a list, tuple or matrix of numbers
# ("t = 0, 0.1, ", "x_0 = (1.5, ", "G = \begin{pmatrix} 0.8 & 0 \\ "), and "\in" followed by sets or intervals
# ("\in \{0.1, ", "\in [-1.5, 3.5] \times [") up to the number, with no relation in between; a symbol is a letter or
# a command with sub- and superscripts and arguments (\beta_{\min}, s_0^2, \sigma_{\mathrm{VP}}(10^{-3}), P(0))
SYMBOL = r"(?:\\[A-Za-z]+|[A-Za-z])(?:_\{[^{}]*\}|_\\?[A-Za-z0-9]+|\^\{[^{}]*\}|\^\d|')*(?:\([^()]*\))?"
SET_BEFORE = re.compile(r"(?:^|[\s,;(])" + SYMBOL + r"\s*=\s*(?:\\begin\{[pbv]?matrix\}|\()?\s*"
                        r"(?:-?\d+(?:\.\d+)?\s*(?:,|&|\\\\)\s*)*-?$"
                        r"|\\in\b(?:(?!=|<|>|\\[lg]eq?\b|\\approx|\\sim).)*$")
GLUE = re.compile(r"\{glue(?::text)?\}`([^`:]+)(?::[^`]*)?`")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(.*?)\s*$")


def split_blocks(markdown: str) -> tuple[str, list[str]]:
    """The markdown with its fenced blocks blanked (plain code and {math} directives; the bodies of other directives,
    such as exercises and admonitions, stay: they are prose), and the bodies of its {math} directives."""
    lines, keep, maths, stack = markdown.split("\n"), [], [], []    # stack: (fence, kind) of the open blocks
    for line in lines:
        m = FENCE.match(line)
        if stack and stack[-1][1] in ("code", "math"):                  # literal content: only its own fence closes it
            fence, kind = stack[-1]
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2):
                stack.pop()
            elif kind == "math":
                maths[-1].append(line)
            keep.append("")
            continue
        if m and stack and not m.group(2) and m.group(1)[0] == stack[-1][0][0] and len(m.group(1)) >= len(stack[-1][0]):
            stack.pop()                                                  # the end of a directive
            keep.append("")
        elif m:                                                          # an opening fence
            info = m.group(2)
            kind = "math" if info.startswith("{math}") else "directive" if info.startswith("{") else "code"
            stack.append((m.group(1), kind))
            if kind == "math":
                maths.append([])
            keep.append("")
        else:
            keep.append(line)
    return "\n".join(keep), ["\n".join(body) for body in maths]


def prose(markdown: str) -> str:
    "The markdown with code fences, directive options, math, roles and code spans blanked out: what a reader reads as text."
    md, _ = split_blocks(markdown)                                 # code blocks, {math} blocks, fence lines
    md = re.sub(r"^:[a-z-]+:.*$", " ", md, flags=re.M)            # directive options (:label:, :class:)
    md = re.sub(r"\$\$.*?\$\$", " ", md, flags=re.S)              # display math
    md = re.sub(r"(?<!\\)\$[^$]*\$", " ", md)                     # inline math
    md = re.sub(r"\{[a-z:-]+\}`[^`]*`", " ", md)                  # roles: {eq}, {doc}, {cite}, {glue:text}
    md = re.sub(r"``.*?``|`[^`]*`", " ", md)                      # code spans
    md = re.sub(r"\]\([^)]*\)", "]", md)                          # link targets
    md = re.sub(r"(?i)\b(eqs?\.|section|chapter|appendix|§)\s*\(?\d+(\.\d+)*\)?", " ", md)   # cross-references
    return md


def math(markdown: str) -> list[str]:
    "The math of the markdown: inline $...$, display $$...$$ and the bodies of {math} blocks (not in code or code spans)."
    md, blocks = split_blocks(markdown)
    md = re.sub(r"``.*?``|`[^`]*`", " ", md)                      # code spans and roles' arguments
    spans = [m.group(1) if m.group(1) is not None else m.group(2)
             for m in re.finditer(r"\$\$(.*?)\$\$|(?<!\\)\$([^$]*)\$", md, flags=re.S)]
    return spans + blocks


def written(number: str) -> str:
    "A number of the math as the metadata names it: 5e-3 for 5\\cdot 10^{-3}, 2% for 2\\,\\%, 0.06 for 0.06."
    number = re.sub(r"\s|\\[,;:! ]|~|[{}]", "", number)
    number = re.sub(r"\\(?:cdot|times)10\^", "e", number)
    return number.replace("\\%", "%")


def math_numbers(body: str) -> list[tuple[str, str]]:
    "(number as written, without spaces, and its math) of every number in one piece of math that is not a setting."
    found = []
    for m in MATH_NUMBER.finditer(body):
        before = body[:m.start()]
        word = re.search(r"\\?[A-Za-z]+$", before)                   # \pm0.013 is a number, x2.5 or \log_2 is not
        if word and not word.group().startswith("\\"):
            continue
        if SET_BEFORE.search(before) or body[m.end():].lstrip().startswith("^") or re.search(r"_\{?$", before):
            continue                                                # a setting, the base of a power, a subscript
        found.append((written(m.group(1)), " ".join(body.split())[:80]))
    return found


def typed_numbers(nb: dict) -> list[tuple[int, str, str]]:
    "(cell index, number as written, context) of every number in the notebook's prose and in its math."
    found = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            src = "".join(cell["source"])
            text = prose(src)
            for m in NUMBER.finditer(text):
                found.append((i, re.sub(r"\s", "", m.group(1)), " ".join(text[max(0, m.start() - 40):m.end() + 20].split())))
            for body in math(src):
                found += [(i, n, f"${ctx}$") for n, ctx in math_numbers(body)]
    return found


def glued_names(nb: dict) -> tuple[set, set]:
    """Names the prose uses with {glue:text}, and names that code cells pass to glue(...): literal names, and f-string
    templates such as glue(f"g17_{tag}_kept", ...), recorded as regular expressions (a field matches a name's part)."""
    used, recorded = set(), set()
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            used |= set(GLUE.findall(re.sub(r"``.*?``", " ", src)))   # not a role shown as code
        else:
            recorded |= set(re.findall(r"""\bglue\(\s*f?["']([A-Za-z_][A-Za-z0-9_]*)["']""", src))
            for template in re.findall(r"""\bglue\(\s*f["']([A-Za-z0-9_{}\[\]"'.]*\{[^"']*)["']""", src):
                parts = re.split(r"\{[^{}]*\}", template)
                recorded.add(re.compile("[A-Za-z0-9_]+".join(re.escape(q) for q in parts)))
    return used, recorded


def unrecorded(used: set, recorded: set) -> list:
    "The used names that neither a literal nor a template of `recorded` accounts for."
    literal = {r for r in recorded if isinstance(r, str)}
    templates = [r for r in recorded if not isinstance(r, str)]
    return sorted(n for n in used if n not in literal and not any(t.fullmatch(n) for t in templates))


def test_the_prose_scanner_finds_what_it_should():
    md = ("The sampler reaches 94 % (0.857 confidence) in 11 s with 1,438 digits; $0.25$ and `0.3` and "
          "{glue:text}`x:.2f` are not prose, nor eq. (3.2), nor 30 steps.\n```python\nx = 0.5\n```\n:label: ex-1.5\n")
    found = [n for _, n, _ in typed_numbers({"cells": [{"cell_type": "markdown", "source": [md]}]})]
    assert found == ["94%", "0.857", "11s", "0.25"]


def test_prose_between_two_blocks_is_prose():
    "A closing fence is not the opening of a code block: the text between two blocks is read (it once was not)."
    md = ("```{math}\n:label: eq-a\nx = 0.5\n```\nthe loss flattens at 0.27 here\n```{math}\ny \\approx 1.5 z\n```\n"
          "````{exercise}\nSolve it in 2.5 s.\n```python\nz = 0.75\n```\n````\n")
    found = [n for _, n, _ in typed_numbers({"cells": [{"cell_type": "markdown", "source": [md]}]})]
    assert found == ["0.27", "2.5s", "1.5"]


def test_the_math_scanner_finds_measurements_not_settings():
    md = ("$\\Delta\\log p \\approx -0.20$ against $-0.01$, floor $\\pm 0.03$, spread $\\pm0.013$; $e(t)$ is $2\\,\\%$ and a flat "
          "$\\approx 5\\cdot 10^{-3}$; $t \\approx 0.003$. Settings: $\\beta_{\\min} = 0.1$, $t = 0, 0.1, 0.3, 1$, "
          "$\\alpha \\in \\{0.1, 0.5\\}$, $(x, t) \\in [-1.5, 3.5] \\times [0.05, 2]$, $\\mathcal{N}(0, 0.25^2 I)$, $N = 1000$, "
          "$10^{-3}$, $p_{0.5}$, $x_0 = (1.5, -0.5)$, $G = \\begin{pmatrix} 0.8 & 0 \\\\ 0.4 & 0.6 \\end{pmatrix}$.")
    found = [n for _, n, _ in typed_numbers({"cells": [{"cell_type": "markdown", "source": [md]}]})]
    assert found == ["0.20", "0.01", "0.03", "0.013", "2%", "5e-3", "0.003"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_quoted_number_has_a_source(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    allowed = nb["metadata"].get("typed_numbers", {})
    assert all(isinstance(v, str) and v.strip() for v in allowed.values()), \
        f"{path.name}: every entry of metadata.typed_numbers needs a reason"
    unsourced = [(i, n, ctx) for i, n, ctx in typed_numbers(nb) if n not in allowed]
    assert not unsourced, (f"{path.name}: numbers typed into the prose or its math with no source. Glue them from the "
                           "cell that computes them ({glue:text}`name:.2f`, sde_diffusion.core.glue; next to the math, "
                           "since roles do not work inside it), or list them in the notebook's metadata typed_numbers "
                           "with the reason they are typed:\n"
                           + "\n".join(f"  cell {i}: {n!r} in '...{ctx}...'" for i, n, ctx in unsourced))
    written = {n for _, n, _ in typed_numbers(nb)}
    stale = sorted(set(allowed) - written)
    assert not stale, f"{path.name}: metadata.typed_numbers lists numbers the prose no longer has: {stale}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_glued_name_is_recorded_by_a_cell(path):
    "The build fails on a missing glue name too, but only after executing; this finds it in a second."
    used, recorded = glued_names(json.loads(path.read_text(encoding="utf-8")))
    missing = unrecorded(used, recorded)
    assert not missing, f"{path.name}: the prose uses glue names that no code cell records: {missing}"


def test_glue_templates_match_only_their_names():
    code = 'for t in "ab":\n    glue(f"g9_{t}_kept", 1)\n    glue(f"g9_{tags[m]}_fd_{k}", 2)\nglue("g9_n", 3)\n'
    used, recorded = glued_names({"cells": [{"cell_type": "code", "source": [code]},
                                            {"cell_type": "markdown", "source": ["{glue:text}`g9_a_kept:.2f` {glue:text}`g9_n`"]}]})
    assert used == {"g9_a_kept", "g9_n"}
    assert unrecorded({"g9_a_kept", "g9_rp_fd_3", "g9_n"}, recorded) == []
    assert unrecorded({"g9_a_kept_se", "g9__kept", "g9_a_fd", "g9_m"}, recorded) == ["g9__kept", "g9_a_fd", "g9_a_kept_se", "g9_m"]


def shown_glue_cells(nb: dict) -> list[int]:
    """Code cells whose last statement is a bare expression calling `glue`: Jupyter shows its value under the cell
    (`glue` returns the number), a stray '0.3438' in the book. Ending the line with ';' hides it."""
    import ast
    shown = []
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] != "code":
            continue
        src = "".join(c["source"])
        try:
            body = ast.parse(src).body
        except SyntaxError:          # cell magics: not plain Python
            continue
        if not body or not isinstance(body[-1], ast.Expr):
            continue
        last = body[-1]
        calls = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "glue" for n in ast.walk(last))
        if calls and not src.split("\n")[last.end_lineno - 1][last.end_col_offset:].lstrip().startswith(";"):
            shown.append(i)
    return shown


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_cell_shows_a_glued_value(path):
    shown = shown_glue_cells(json.loads(path.read_text(encoding="utf-8")))
    assert not shown, f"{path.name}: cells {shown} end with a bare glue(...) whose value the book shows: end it with ';'"


def test_the_glue_display_check_finds_what_it_should():
    cells = lambda *srcs: {"cells": [{"cell_type": "code", "source": [s]} for s in srcs]}
    assert shown_glue_cells(cells('x = 1\nglue("a", x)', 'glue("a", 1), glue("b", 2)  # note', "%%time\nglue('a', 1)")) == [0, 1]
    assert shown_glue_cells(cells('glue("a", 1);', 'glue("a", 1);  # note', 'y = glue("a", 1)', 'glue("a", 1)\nprint(2)')) == []
