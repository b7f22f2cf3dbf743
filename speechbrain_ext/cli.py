"""The ``speechbrain-ext`` command line.

Each subcommand lives in a function ``_run_<name>(args)``; :func:`build_parser` declares them.
"""

import argparse
import sys

import speechbrain_ext


def _run_demo(args):
    print(
        "speechbrain-ext demo: not yet available: the FRCRN and MossFormer models are in place, "
        "the demo weights and bundled examples are still to come (see README)."
    )
    return 0


def build_parser():
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="speechbrain-ext",
        description="FRCRN speech enhancement and MossFormer speech separation for SpeechBrain.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {speechbrain_ext.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="enhance and separate the bundled examples offline")
    demo.set_defaults(run=_run_demo)
    return parser


def main(argv=None):
    """Entry point of the ``speechbrain-ext`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
