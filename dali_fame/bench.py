"""``dali-fame bench NAME [ARGS...]``: run ``benchmarks/bench_NAME.py`` with the given arguments.

The benchmarks live in the repository's benchmarks/ folder (they are scripts, not library
code); this wrapper finds that folder next to the package of a source checkout.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem[len("bench_"):] for p in BENCH_DIR.glob("bench_*.py"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help=f"benchmark to run: {', '.join(available()) or 'none found'}")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")


def run(args: argparse.Namespace) -> int:
    script = BENCH_DIR / f"bench_{args.name}.py"
    if not script.is_file():
        raise SystemExit(
            f"unknown benchmark {args.name!r}: expected {script} "
            f"(available: {', '.join(available()) or 'none'}; benchmarks need a source checkout)"
        )
    argv = sys.argv
    sys.argv = [str(script), *args.bench_args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = argv
    return 0
