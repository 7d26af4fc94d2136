"""``python -m benchmarks SUITE [options]`` runs one suite (``SUITE --help``: its options):

See benchmarks/README.md for what each measures and its last figures."""

from __future__ import annotations

import importlib
import sys

from benchmarks.common import SUITES, run_suite


def main(argv: list[str] | None = None) -> object:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUITES:
        print(__doc__.splitlines()[0].replace("``", ""))
        for name in SUITES:
            print(f"  {name:12} {importlib.import_module(f'benchmarks.suites.{name}').MEASURES}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nno suite {argv[0]!r}: choose one of {', '.join(SUITES)}", file=sys.stderr)
            sys.exit(2)
        return None
    return run_suite(argv[0], argv[1:])


if __name__ == "__main__":
    main()
