"""`python -m bench [name ...]`: run the named benchmarks (default: all that can run here)."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable

from bench import duckdb_load, es_extract, ledger, lines, orchestration, peers, stage_s3

SUITES: dict[str, Callable[..., None]] = {
    "ledger": ledger.main,
    "orchestration": orchestration.main,
    "elasticsearch": es_extract.main,
    "s3": stage_s3.main,
    "peers": peers.main,
    "duckdb": duckdb_load.main,
    "lines": lines.main,
}
# Needs both virtualenvs (`make bench-lines`), so not part of a plain `make bench`.
DEFAULT = [name for name in SUITES if name != "lines"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suites", nargs="*", help=f"any of {sorted(SUITES)}; default all")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per contender; medians are quoted"
    )
    parser.add_argument(
        "--docs",
        type=int,
        nargs="+",
        help="window sizes for the suites that take them (elasticsearch and peers: documents, "
        "s3: rows, duckdb: columns), e.g. `peers --docs 20000` for a quick smoke run",
    )
    args = parser.parse_args(argv)
    for name in args.suites or DEFAULT:
        suite = SUITES[name]
        if args.docs and "sizes" in inspect.signature(suite).parameters:
            suite(repeat=args.repeat, sizes=tuple(args.docs))
        else:
            suite(repeat=args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
