"""Ledger throughput: claims per second under 16 racing claimers, and bulk registration.

Targets (issue 2): at least 2,000 claims/s on Postgres with zero double claims; a year of 2h
windows (4,380) registers in well under a second, and a second registration inserts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ledgerflow.ledger import Ledger
from ledgerflow.windows import build_record, windows_between

from bench.common import median, show
from bench.postgres import admin_dsn, fresh_database

CLAIMERS = 16
WINDOWS = 4_000
FAR = datetime(2100, 1, 1, tzinfo=UTC)
YEAR = (datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))


async def _claims(url: str, complete: bool) -> tuple[float, int]:
    """Claims per second with CLAIMERS racing; returns (rate, double claims)."""
    ledger = Ledger.from_url(url, pool_size=CLAIMERS)
    await ledger.create_schema()
    start = datetime(2020, 1, 1, tzinfo=UTC)
    ws = windows_between(start, start + timedelta(hours=WINDOWS), "UTC", "1h")
    await ledger.register([build_record("bench", w, "UTC") for w in ws])
    seen: set[int] = set()
    doubles = 0

    async def claimer(i: int) -> None:
        nonlocal doubles
        while (lease := await ledger.claim("bench", f"c{i}", cutoff=FAR)) is not None:
            doubles += lease.id in seen
            seen.add(lease.id)
            if complete:
                await ledger.complete(lease)

    # Open the pool's connections before timing.
    await asyncio.gather(*(ledger.summary("warmup") for _ in range(CLAIMERS)))
    started = time.perf_counter()
    await asyncio.gather(*(claimer(i) for i in range(CLAIMERS)))
    elapsed = time.perf_counter() - started
    await ledger.close()
    assert len(seen) == WINDOWS, len(seen)
    return WINDOWS / elapsed, doubles


async def _register(url: str) -> tuple[float, float, int]:
    ledger = Ledger.from_url(url)
    await ledger.create_schema()
    records = [
        build_record("bench", w, "America/Los_Angeles")
        for w in windows_between(*YEAR, "America/Los_Angeles", "2h")
    ]
    started = time.perf_counter()
    first = await ledger.register(records)
    mid = time.perf_counter()
    second = await ledger.register(records)
    end = time.perf_counter()
    await ledger.close()
    assert first == len(records) == 4380, first
    return mid - started, end - mid, second


async def _run(repeat: int, dsn: str, tmp: Path) -> list[list[object]]:
    rows: list[list[object]] = []
    for backend in ("postgres", "sqlite"):
        results: dict[str, list[float]] = {"claim": [], "cycle": [], "reg1": [], "reg2": []}
        doubles = 0
        inserted_again = 0
        for i in range(repeat):
            for key, complete in (("claim", False), ("cycle", True)):
                async with _url(backend, dsn, tmp, f"{key}{i}") as url:
                    rate, d = await _claims(url, complete)
                results[key].append(rate)
                doubles += d
            async with _url(backend, dsn, tmp, f"reg{i}") as url:
                r1, r2, again = await _register(url)
            results["reg1"].append(r1)
            results["reg2"].append(r2)
            inserted_again += again
        rows.append(
            [
                backend,
                median(results["claim"]),
                median(results["cycle"]),
                doubles,
                median(results["reg1"]),
                median(results["reg2"]),
                inserted_again,
            ]
        )
    return rows


@contextlib.asynccontextmanager
async def _url(backend: str, dsn: str, tmp: Path, tag: str):  # type: ignore[no-untyped-def]
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / tag}.db"
    else:
        async with fresh_database(dsn) as url:
            yield url


def main(repeat: int = 3) -> None:
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        dsn = admin_dsn(stack)
        rows = asyncio.run(_run(repeat, dsn, Path(tmp)))
    show(
        f"ledger: {CLAIMERS} racing claimers over {WINDOWS:,} windows; 4,380 windows registered; "
        f"median of {repeat}",
        [
            "backend",
            "claims/s",
            "claim+complete/s",
            "double claims",
            "register 1y (s)",
            "again (s)",
            "inserted again",
        ],
        rows,
    )
    pg = rows[0]
    verdict = "meets" if float(pg[1]) >= 2000 and pg[3] == 0 else "MISSES"  # type: ignore[arg-type]
    print(f"postgres claims {verdict} the 2,000/s target with {pg[3]} double claims")
