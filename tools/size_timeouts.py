"""Size each notebook's cell timeout from measured cell times: slowest cell x a margin, never the old blanket 900 s.

    .venv/bin/python tools/assert_margins.py nbs/*.ipynb --fixed --out /tmp/course.json    # measures every cell
    .venv/bin/python tools/size_timeouts.py /tmp/course.json [/tmp/other_run.json ...]

Every cell of every notebook runs under `execute.timeout` of book/_config.yml (the default, sized for the fast
chapters); a notebook whose slowest measured cell x `--margin` exceeds that default gets its own
`"execution": {"timeout": N}` in its metadata, which jupyter-cache (the book build) honours per notebook. Measure on a
loaded machine: the margin then covers a slower CPU, not a lost message (those cost 0.25 s, see
book/_ext/reliable_execution.py).
"""
import argparse
import json
import math
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("runs", nargs="+", type=Path, help="JSON written by tools/assert_margins.py")
p.add_argument("--margin", type=float, default=4.0)
a = p.parse_args()
default = yaml.safe_load((ROOT / "book/_config.yml").read_text())["execute"]["timeout"]
slowest: dict[str, float] = {}
for run in a.runs:
    for name, t in json.loads(run.read_text()).get("timing", {}).items():
        if t.get("slowest_cell") is not None:
            slowest[name] = max(slowest.get(name, 0.0), t["slowest_cell"])
for name, s in sorted(slowest.items()):
    path = ROOT / "nbs" / name
    nb = json.loads(path.read_text())
    need = math.ceil(a.margin * s / 60) * 60           # whole minutes
    meta = nb.setdefault("metadata", {})
    if need > default:
        meta["execution"] = {"timeout": need}
    else:
        meta.pop("execution", None)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    print(f"{name:28s} slowest cell {s:7.1f} s -> timeout {max(need, default) if need > default else default} s"
          + ("" if need > default else " (the default)"))
