"""The ``dali-fame`` command: one entry point, subcommands implemented next to what they run.

Each subcommand lives in the module that owns its work and exposes ``add_arguments(parser)``
and ``run(args) -> int``; this file only wires them, importing lazily so that ``dali-fame
doctor`` works even when an optional heavy dependency is broken.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("dali_fame.doctor", "print versions, GPUs and which decoder / FAME backend a run uses"),
    "synth": ("dali_fame.data.synthetic", "generate the synthetic motion-class video dataset"),
    "index": ("dali_fame.data.index", "probe a video dataset, cache the results, report bad files"),
    "check-decode": ("dali_fame.data.check_decode",
                     "decode frame-stamped videos through every decoder; fail on any wrong frame"),
    "bench": ("dali_fame.bench", "run a benchmark from benchmarks/ (loader, fame, train)"),
    "selftest": ("dali_fame.selftest",
                 "check every GPU path (tests, decoding, benchmarks, training) and report"),
    "bias-bench": ("dali_fame.bias.bench", "pretrain, evaluate and report the background-bias benchmark"),
    "figure": ("dali_fame.figures.command", "draw the paper's figures as PNGs (masks, cam, temporal, retrieval)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dali-fame", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints help / the error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"dali-fame {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
