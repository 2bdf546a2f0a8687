"""`python -m data_gen <step> …`: the data pipeline's command line.

Steps register here as they land (sources, embed, cluster, sample, generate,
clean, annotate, write, run); today there are none, and the command says so.
"""
import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m data_gen", description=__doc__)
  parser.add_subparsers(dest="step", metavar="step")
  return parser


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.step is None:
    parser.print_help()
    print("\nno pipeline steps are installed in this version of data_gen", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
