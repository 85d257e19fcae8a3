"""`make bench`: every benchmarks/bench_*.py, each printing a markdown section, into RESULTS.md.

Each benchmark compares quantgate with the library a user would otherwise reach for, on the same
large files, in separate processes (whole-process time, as a CI step pays it, and peak RSS).
"""

from __future__ import annotations

import argparse
import compileall
import subprocess
import sys
import time
from pathlib import Path

from results import fence_plain, machine, order_sections, rebuild_headline, replace_section, rerun  # beside this script

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--only", help="run only bench_<NAME>.py (NAME,NAME... for several)")
    args = parser.parse_args()
    output = Path(args.output)
    # quantgate's modules as an installed wheel has them, compiled to bytecode (pip compiles at install;
    # an editable checkout under PYTHONDONTWRITEBYTECODE=1 would recompile every module in every
    # process, ~50 ms the anchors' site-packages never pay)
    compileall.compile_dir(str(HERE.parent / "src"), quiet=1)
    if not args.only:  # a rerun of one section leaves the machine line of the whole run and says so itself
        replace_section(output, "## Machine", "## Machine\n\n" + machine() + f"\n\nRun on {time.strftime('%Y-%m-%d')}. "
                        "A section rerun on its own since says when, at which commit and under which load.")
    failed = 0
    for script in sorted(HERE.glob("bench_*.py")):
        if args.only and script.stem.removeprefix("bench_") not in args.only.split(","):
            continue
        print(f"== {script.name}", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        sys.stderr.write(proc.stderr[-4000:])
        name = script.stem.removeprefix("bench_")
        heading = f"## {name}"
        body = (
            proc.stdout.strip()
            if proc.returncode == 0
            else f"failed (exit {proc.returncode}):\n\n```\n{proc.stderr[-2000:]}\n```"
        )
        if not body.startswith("## "):
            body = f"{heading}\n\n{body}"
        else:
            heading = body.splitlines()[0]
        failed += proc.returncode != 0
        if args.only and proc.returncode != 0:
            print(f"{script.name} failed: its section in {output} is left as it was", file=sys.stderr)
            continue
        body = fence_plain(body)
        if args.only:
            stamp = time.strftime("%Y-%m-%d %H:%M")
            body += f"\n\n_Rerun on its own (`run_all.py --only {name}`) on {stamp} UTC: {rerun()}._"
        replace_section(output, heading, body)
        order_sections(output)
        rebuild_headline(output)
    print(output.read_text(encoding="utf-8"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
