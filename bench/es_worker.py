"""One contender of the Elasticsearch benchmark, run in its own process so its peak RSS is its own.

`python -m bench.es_worker raw|raw-gc|ledgerflow URL INDEX START END PAGE SLICES OUTDIR` prints
`{"docs": N, "seconds": S}`: seconds from the first request to the last document handled.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
from datetime import datetime
from typing import Any

from bench.common import own_peak_mb


async def raw(url: str, index: str, start: str, end: str, page: int, slices: int) -> int:
    """The ceiling: the same client (built as the block builds it) and paging (sliced
    scroll), documents discarded."""
    from ledgerflow.blocks.elasticsearch import ElasticsearchSource
    from ledgerflow.blocks.elasticsearch.transport import connect

    block = ElasticsearchSource.parse_obj(
        {"hosts": [url], "index": index, "compatibility_headers": False, "request_timeout": 120}
    )
    async with connect(block) as es:
        return await _pages(es, index, start, end, page, slices)


async def _pages(es: Any, index: str, start: str, end: str, page: int, slices: int) -> int:
    query = {"range": {"@timestamp": {"gte": start, "lt": end}}}

    async def one(slice_id: int) -> int:
        extra: dict[str, Any] = {"slice": {"id": slice_id, "max": slices}} if slices > 1 else {}
        r = await es.search(
            index=index, scroll="2m", size=page, query=query, sort=["_doc"], **extra
        )
        seen = 0
        while hits := r["hits"]["hits"]:
            seen += len(hits)
            r = await es.scroll(scroll_id=r["_scroll_id"], scroll="2m")
        await es.clear_scroll(scroll_id=r["_scroll_id"])
        return seen

    return sum(await asyncio.gather(*(one(i) for i in range(slices))))


async def ledgerflow(
    url: str, index: str, start: str, end: str, page: int, slices: int, out: str
) -> int:
    """ledgerflow's source-to-stage: documents to staged Parquet files."""
    from ledgerflow.blocks.elasticsearch import ElasticsearchSource
    from ledgerflow.blocks.local_stage import LocalStage
    from ledgerflow.windows import Window

    lo, hi = datetime.fromisoformat(start), datetime.fromisoformat(end)
    window = Window(lo, hi, lo.date(), "2h")
    src = ElasticsearchSource.parse_obj(
        {
            "hosts": [url],
            "index": index,
            "compatibility_headers": False,
            "page_size": page,
            "slices": slices,
            "request_timeout": 120,
            # the ceiling's paging (a sliced scroll), not osmem's point in time: same requests
            "point_in_time": "never",
        }
    )
    stage = LocalStage.parse_obj({"root": out})
    manifest = await stage.write("bench", src.extract(window), name_prefix="part")
    return manifest.rows


def main() -> None:
    mode, url, index, start, end, page, slices, out = sys.argv[1:9]
    # Imported before the clock starts, as the docstring says: importing the block (and so
    # Prefect) took 1.8 to 2.3 s of a 200,000-document run (py-spy), a fixed cost of the process
    # that made every contender look alike on a small window.
    for module in (
        "ledgerflow.blocks.elasticsearch",
        "ledgerflow.blocks.elasticsearch.transport",
        "ledgerflow.blocks.local_stage",
        "ledgerflow.windows",
    ):
        importlib.import_module(module)  # not `import ledgerflow...`: that name is a function

    started = time.perf_counter()
    if mode == "raw":
        docs = asyncio.run(raw(url, index, start, end, int(page), int(slices)))
    elif mode == "raw-gc":
        from ledgerflow import gctune

        with gctune.for_bulk_json():  # the ceiling with the collector tuned as ledgerflow does
            docs = asyncio.run(raw(url, index, start, end, int(page), int(slices)))
    else:
        docs = asyncio.run(ledgerflow(url, index, start, end, int(page), int(slices), out))
    seconds = time.perf_counter() - started
    print(json.dumps({"docs": docs, "seconds": seconds, "peak_mb": own_peak_mb()}))


if __name__ == "__main__":
    main()
