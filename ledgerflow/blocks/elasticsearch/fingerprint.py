"""A cheap fingerprint of an Elasticsearch window: what `ElasticsearchSource.fingerprint` returns.

Every write to a document (index, update, delete) takes the shard's next sequence number
(`_seq_no`), greater than every earlier one in that shard. So in one shard, the window's document
count together with the sum and the maximum of its documents' `_seq_no` changes whenever a
document of the window is added, deleted or edited, even when the count stays the same: an
added or edited document carries a number above every number the window held, a deleted one
lowers the count or the sum. The fingerprint holds, per index (a terms aggregation on
`_index`, and the index's UUID, which changes when an index is deleted and created again), the
count, the sum and the maximum: one size-0 search, no document moved.

Sequence numbers are per shard, so a window of an index with more than one shard could, in a
rare coincidence, see a delete in one shard and an insert in another with the same number; then
the fingerprint is None (not known) and the window is extracted again on resume. The same when
the server refuses the aggregation, or when the sum no longer fits a double exactly.
"""

from __future__ import annotations

import json
from typing import Any

from elasticsearch import ApiError, AsyncElasticsearch

_EXACT = 2**53  # a double holds every integer below this


async def window_fingerprint(
    client: AsyncElasticsearch, index: str, query: dict[str, Any]
) -> str | None:
    """The fingerprint of the documents `query` matches in `index`, or None if not known."""
    try:
        settings = await client.indices.get_settings(
            index=index, name="index.number_of_shards,index.uuid", allow_no_indices=False
        )
        shards = {name: _setting(body, "number_of_shards") for name, body in settings.items()}
        if not shards or any(str(n) != "1" for n in shards.values()):
            return None
        response = await client.search(
            index=index,
            size=0,
            query=query,
            track_total_hits=True,
            aggs={
                "indices": {
                    "terms": {"field": "_index", "size": len(shards) + 1},
                    "aggs": {
                        "sum": {"sum": {"field": "_seq_no"}},
                        "max": {"max": {"field": "_seq_no"}},
                    },
                }
            },
        )
    except ApiError as exc:
        if 400 <= exc.meta.status < 500 and exc.meta.status not in (401, 403, 429):
            return None  # the server cannot answer this: extract again
        raise
    per_index = response["aggregations"]["indices"]
    if per_index.get("sum_other_doc_count"):
        return None
    parts = []
    total = 0
    for bucket in per_index["buckets"]:
        name, docs = str(bucket["key"]), int(bucket["doc_count"])
        seq_sum, seq_max = bucket["sum"]["value"], bucket["max"]["value"]
        if seq_sum is None or seq_max is None or not 0 <= seq_sum < _EXACT:
            return None
        uuid = _setting(settings.get(name, {}), "uuid")
        parts.append([name, uuid, docs, int(seq_sum), int(seq_max)])
        total += docs
    hits = response["hits"]["total"]
    if int(hits["value"] if isinstance(hits, dict) else hits) != total:
        return None  # documents the terms aggregation did not see
    return "es:" + json.dumps(sorted(parts), separators=(",", ":"))


def _setting(body: Any, name: str) -> Any:
    index = (body.get("settings") or {}).get("index") or {}
    return index.get(name, index.get(f"index.{name}"))
