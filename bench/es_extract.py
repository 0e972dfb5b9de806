"""Elasticsearch extraction: ledgerflow vs the raw read ceiling vs elasticdump, one window.

Targets (issue 4), on one window of 500,000 documents of about 300 bytes, same page size for all:
- ledgerflow source-to-stage >= 0.8x the raw read ceiling (same client, same paging, discarding);
- ledgerflow >= 2x faster than elasticdump exporting the same window to a file;
- ledgerflow peak RSS <= 300 MB, growing <= 1.2x from 50,000 to 500,000 documents.
Each contender runs in its own process; peak RSS is that process's own (VmHWM).
`raw-gc` is the ceiling again with the garbage collector tuned as ledgerflow tunes it during an
extraction (ledgerflow.gctune), so the ratio can be read both ways.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import median, run_measured, show

START = datetime(2025, 3, 9, 10, tzinfo=UTC)
END = START + timedelta(hours=2)
PAGE = 1000
SLICES = 2
ROOT = Path(__file__).resolve().parent.parent
ELASTICDUMP = ROOT / ".bench" / "node_modules" / ".bin" / "elasticdump"


def _doc(i: int, n: int) -> dict[str, Any]:
    return document(i, START + timedelta(microseconds=int(i * (7_200_000_000 / n))))


def document(i: int, moment: datetime) -> dict[str, Any]:
    """The i-th log event of the benchmark indices (about 300 bytes), stamped `moment`."""
    return {
        "@timestamp": moment.isoformat().replace("+00:00", "Z"),
        "service": ("web", "api", "worker")[i % 3],
        "host": f"node-{i % 17:02d}.prod.internal",
        "status": 200 if i % 23 else 503,
        "latency_ms": (i * 37) % 900,
        "user": {"id": f"u{i % 5000:05d}", "country": ("US", "DE", "IN", "BR")[i % 4]},
        "message": f"GET /api/v2/items/{i % 9973} completed for session "
        f"s{i * 7919 % 1_000_003:07d} with cache=miss region=us-west-2 retries=0",
    }


async def _load(url: str, index: str, n: int) -> None:
    from elasticsearch import AsyncElasticsearch
    from ledgerflow.blocks.elasticsearch import PlainJsonNode

    es = AsyncElasticsearch(url, node_class=PlainJsonNode, request_timeout=300)
    await es.indices.create(index=index, mappings={"properties": {"@timestamp": {"type": "date"}}})
    for lo in range(0, n, 10_000):
        ops: list[dict[str, Any]] = []
        for i in range(lo, min(n, lo + 10_000)):
            ops += [{"index": {"_index": index, "_id": f"d{i:07d}"}}, _doc(i, n)]
        result = await es.bulk(operations=ops)
        assert not result["errors"]
    await es.indices.refresh(index=index)
    count = (await es.count(index=index))["count"]
    await es.close()
    assert count == n, count


def _run(args: list[str]) -> tuple[float, float, str]:
    """Run a contender; return (wall seconds, its own peak RSS MB, stdout)."""
    return run_measured(args, cwd=ROOT)


def _python(mode: str, url: str, index: str, out: str) -> tuple[float, float, int]:
    _, rss, stdout = _run(
        [
            sys.executable,
            "-m",
            "bench.es_worker",
            mode,
            url,
            index,
            START.isoformat(),
            END.isoformat(),
            str(PAGE),
            str(SLICES),
            out,
        ]
    )
    result = json.loads(stdout.strip().splitlines()[-1])
    return float(result["seconds"]), rss, int(result["docs"])


def _elasticdump(url: str, index: str, out: str) -> tuple[float, float, int] | None:
    if not ELASTICDUMP.exists():
        return None
    body = json.dumps(
        {"query": {"range": {"@timestamp": {"gte": START.isoformat(), "lt": END.isoformat()}}}}
    )
    target = Path(out) / "dump.json"
    wall, rss, _ = _run(
        [
            str(ELASTICDUMP),
            f"--input={url}/{index}",
            f"--output={target}",
            f"--limit={PAGE}",
            f"--searchBody={body}",
            "--quiet",
            "--scroll-with-post",
        ]
    )
    with target.open() as f:
        docs = sum(1 for _ in f)
    return wall, rss, docs


def main(repeat: int = 3, sizes: tuple[int, ...] = (50_000, 500_000)) -> None:
    from osmem_server import OsmemServer

    rows: list[list[object]] = []
    rss_by_size: dict[int, float] = {}
    figures: dict[str, float] = {}
    with OsmemServer.start(freeze=False) as server, tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            index = f"bench{n}"
            asyncio.run(_load(server.url, index, n))
            contenders: dict[str, list[tuple[float, float, int]]] = {
                "raw": [],
                "raw-gc": [],
                "ledgerflow": [],
                "elasticdump": [],
            }
            for r in range(repeat):
                out = Path(tmp) / f"{n}-{r}"
                out.mkdir()
                contenders["raw"].append(_python("raw", server.url, index, str(out)))
                contenders["raw-gc"].append(_python("raw-gc", server.url, index, str(out)))
                contenders["ledgerflow"].append(_python("ledgerflow", server.url, index, str(out)))
                if n == sizes[-1] and r == 0:  # elasticdump is slow: once, on the large window
                    dumped = _elasticdump(server.url, index, str(out))
                    if dumped:
                        contenders["elasticdump"].append(dumped)
                shutil.rmtree(out)
            ceiling = median([n / s for s, _, _ in contenders["raw"]])
            for name, runs in contenders.items():
                if not runs:
                    why = (
                        "run on the largest window only"
                        if n != sizes[-1]
                        else "not installed (make bench installs it)"
                    )
                    rows.append([f"{name} ({n:,})", "-", "-", "-", why])
                    continue
                docs = runs[0][2]
                if name != "elasticdump":
                    assert all(d == n for _, _, d in runs), (name, [d for _, _, d in runs])
                rate = median([d / s for s, _, d in runs])
                rss = median([m for _, m, _ in runs])
                figures[f"{name}-{n}"] = rate
                if name == "ledgerflow":
                    rss_by_size[n] = rss
                note = f"{len(runs)} run(s)"
                if docs != n:
                    # elasticdump's scroll stops at 10,000 documents on osmem: rate per doc it got
                    note += f"; exported {docs:,} of {n:,}"
                rows.append([f"{name} ({n:,})", rate, rate / ceiling, rss, note])
    show(
        f"Elasticsearch window extraction (osmem-server, page {PAGE}, {SLICES} slices), medians",
        ["contender (docs)", "docs/s", "x raw ceiling", "peak RSS (MB)", "runs"],
        rows,
    )
    big, small = sizes[-1], sizes[0]
    ratio = figures[f"ledgerflow-{big}"] / figures[f"raw-{big}"]
    tuned = figures[f"ledgerflow-{big}"] / figures[f"raw-gc-{big}"]
    print(
        f"ledgerflow / raw ceiling at {big:,}: {ratio:.2f}x (target >= 0.80); "
        f"/ the ceiling with ledgerflow's GC settings: {tuned:.2f}x"
    )
    if f"elasticdump-{big}" in figures:
        speedup = figures[f"ledgerflow-{big}"] / figures[f"elasticdump-{big}"]
        print(f"ledgerflow / elasticdump at {big:,}: {speedup:.2f}x faster (target >= 2)")
    growth = rss_by_size[big] / rss_by_size[small]
    print(
        f"ledgerflow peak RSS: {rss_by_size[big]:.0f} MB at {big:,} (target <= 300), "
        f"growth {growth:.2f}x from {small:,} (target <= 1.2)"
    )
