#!/usr/bin/env python3
"""What each explorer (sde_diffusion.explorers.frame_player) costs in the built book: frames, page weight, render time.

    python tools/explorer_budget.py            # reads book/_build/html (run `make book` first)

Prints one line per explorer and the totals; the render time is the build-time cost recorded by the player itself.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "book" / "_build" / "html"
PLAYER = re.compile(r'<div class="sde-player" id="[^"]+" data-frame="\d+" data-frames="(\d+)" data-render-seconds="([\d.]+)">'
                    r'.*?</script><script>.*?</script></div>', re.S)


def main() -> int:
    if not HTML.is_dir():
        print(f"no built book at {HTML}: run `make book` first", file=sys.stderr)
        return 1
    rows, total_bytes, total_s, total_frames = [], 0, 0.0, 0
    for page in sorted(HTML.rglob("*.html")):
        text = page.read_text(errors="ignore")
        for m in PLAYER.finditer(text):
            n, s, size = int(m.group(1)), float(m.group(2)), len(m.group(0).encode())
            rows.append((page.relative_to(HTML).as_posix(), n, size, s))
            total_bytes, total_s, total_frames = total_bytes + size, total_s + s, total_frames + n
    print(f"{'page':<32} {'frames':>6} {'kB':>7} {'render s':>9}")
    for rel, n, size, s in rows:
        print(f"{rel:<32} {n:>6} {size / 1e3:>7.0f} {s:>9.1f}")
    print(f"{'total (' + str(len(rows)) + ' explorers)':<32} {total_frames:>6} {total_bytes / 1e3:>7.0f} {total_s:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
