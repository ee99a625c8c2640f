"""What every part of the benchmark's command line takes: --out and --quick.

A full run writes the reference results, which the README quotes and its
tests check; a quick run only checks that the benchmark runs, so it writes
elsewhere unless told.
"""

import argparse
import json
import pathlib

REFERENCE_RESULTS = "bench/results"
QUICK_RESULTS = "bench/quick-results"
# What a quick run says of its outputs, in them and as it ends.
QUICK_NOTE = (
    "A --quick run: too short to read anything into, and not the reference"
    f" run ({REFERENCE_RESULTS}), so no goal is judged."
)


def parser_for(prog, description):
    """Return a parser that takes the options every part of the benchmark has."""
    # Keep the description's lines: the parts' docstrings show their commands.
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        help=f"folder of the outputs ({REFERENCE_RESULTS}; {QUICK_RESULTS} with"
        " --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few short rounds: checks that it runs, too short to read into",
    )
    return parser


def parse(parser):
    """Read the command line, with the outputs' folder that --quick implies."""
    arguments = parser.parse_args()
    if arguments.out is None:
        arguments.out = QUICK_RESULTS if arguments.quick else REFERENCE_RESULTS
    return arguments


def run_part(prog, description, run):
    """Run one part of the benchmark from the command line; name its outputs."""
    arguments = parse(parser_for(prog, description))
    for path in run(arguments.out, arguments.quick):
        print(path)
    if arguments.quick:
        print(QUICK_NOTE)


def write_outputs(out, name, results, markdown):
    """Write a part's results into ``out`` as ``name``.json and, rendered by
    ``markdown``, ``name``.md; return their paths, the table's first."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(results))
    return [out / f"{name}.md", out / f"{name}.json"]
