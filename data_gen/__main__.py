"""`python -m data_gen <step> …`: the data pipeline's command line.

    python -m data_gen run --work runs/demo          # every step, offline defaults
    python -m data_gen <step> --work runs/demo …     # one step; `<step> -h` lists its flags

Every step prints a table of what it kept and skipped by reason. Every step
is resumable: rerunning the same command skips finished shards and picks up
generation after the last record written.
"""
from __future__ import annotations

import argparse
import sys

from data_gen.report import summary_table
from data_gen.steps.cli import OPTIONS, STEPS, TOOLS


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m data_gen", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="step", metavar="step", required=True)
  for step in STEPS + TOOLS:
    _add_options(commands.add_parser(step.name, help=step.help), step.options)
  # run's stats read the export it just wrote, so stats' --json (another file) is left out.
  every = dict.fromkeys(option for step in STEPS for option in step.options if option != "--json")
  run = commands.add_parser("run", help="every step in order: " + " → ".join(s.name for s in STEPS))
  _add_options(run, every)
  run.set_defaults(json=None)
  return parser


def _add_options(parser: argparse.ArgumentParser, names) -> None:
  for name in names:
    parser.add_argument(name, **OPTIONS[name])


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  steps = STEPS if args.step == "run" else [s for s in STEPS + TOOLS if s.name == args.step]
  args.work.mkdir(parents=True, exist_ok=True)
  for step in steps:
    try:
      tally, notes = step.run(args)
    except (FileNotFoundError, ImportError, ValueError) as error:
      print(f"data_gen {step.name}: {error}", file=sys.stderr)
      return 2
    print(summary_table(step.name, tally, notes=notes), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
