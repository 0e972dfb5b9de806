"""`ElasticsearchSource`: exact counts and bounded-memory, parallel window extraction.

Documents without the timestamp field belong to no window: `count` does not count them and
`extract` never returns them. A document whose timestamp is an array belongs to the window of
its earliest value, in count and extract. The jobs live beside it: `transport` (the client and
its errors), `paging` (point in time, scroll, the parallel slices), `probe` (what the server
allows), `batches` and `stamps` (hits as Arrow), `jsontext` (JSON exactly as the server wrote it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Literal

import pyarrow as pa
from elasticsearch import AsyncElasticsearch
from prefect.blocks.core import Block

from ledgerflow import gctune
from ledgerflow.blocks.checks import check_node_url, forbid_unknown_fields, in_range
from ledgerflow.blocks.elasticsearch.batches import Shaping
from ledgerflow.blocks.elasticsearch.fingerprint import window_fingerprint
from ledgerflow.blocks.elasticsearch.paging import PitApi, Reading, window_pages, window_query
from ledgerflow.blocks.elasticsearch.probe import (
    ServerFacts,
    TimestampMapping,
    find_pit_api,
    read_mapping,
)
from ledgerflow.blocks.elasticsearch.transport import connect, source_errors
from ledgerflow.compat import Field, PrivateAttr, SecretStr, root_validator, validator
from ledgerflow.redact import has_userinfo, scrub_url
from ledgerflow.windows import Window

_FIXED_PIT_API: dict[str, PitApi] = {
    "always": "elasticsearch",
    "opensearch": "opensearch",
    "never": "",
}


class ElasticsearchSource(Block):
    """Reads windows from an Elasticsearch index (or pattern) by a date field; a document whose
    timestamp is an array is in the window of its earliest value (count and extract agree).

    Example:
        Count a window:
        ```python
        from ledgerflow.blocks.elasticsearch import ElasticsearchSource

        source = ElasticsearchSource.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Ledgerflow Elasticsearch Source"
    _block_type_slug = "ledgerflow-elasticsearch-source"
    _description = "Exact counts and parallel, bounded-memory extraction of time windows."
    _known_fields = forbid_unknown_fields()

    hosts: list[str] | None = Field(
        None, title="Hosts", description="Node URLs, e.g. https://es.example.com:9200."
    )
    cloud_id: str | None = Field(None, title="Cloud ID", description="Elastic Cloud ID.")
    api_key: SecretStr | None = Field(None, title="API key", description="API key auth.")
    username: str | None = Field(None, title="Username", description="Basic auth user.")
    password: SecretStr | None = Field(None, title="Password", description="Basic auth password.")
    bearer_token: SecretStr | None = Field(None, title="Bearer token", description="Token auth.")
    verify_certs: bool = Field(True, title="Verify TLS", description="Verify server certificates.")
    ca_certs: str | None = Field(None, title="CA bundle", description="Path to a CA bundle.")
    compatibility_headers: bool = Field(
        True,
        title="Compatibility headers",
        description="Send Elasticsearch 9 compatibility media types; turn off for "
        "OpenSearch-compatible servers that answer 406.",
    )
    index: str = Field(..., title="Index", description="Index name, alias or pattern.")
    timestamp_field: str = Field(
        "@timestamp", title="Timestamp field", description="A date or date_nanos field."
    )
    query: dict[str, Any] | None = Field(
        None,
        title="Extra query",
        description="A query clause (DSL) AND-ed with the window's range, e.g. {'term': {...}}.",
    )
    source_includes: list[str] | None = Field(
        None, title="Include fields", description="_source fields to keep."
    )
    source_excludes: list[str] | None = Field(
        None, title="Exclude fields", description="_source fields to drop."
    )
    columns: dict[str, str] | None = Field(
        None,
        title="Columns",
        description="Extra output column -> document field path, stored as text.",
    )
    missing_index: Literal["error", "empty"] = Field(
        "error",
        title="Missing index",
        description="'error' fails the window; 'empty' treats a missing index as no documents.",
    )
    point_in_time: Literal["auto", "always", "opensearch", "never"] = Field(
        "auto",
        title="Point in time",
        description=(
            "'auto' uses Elasticsearch's point in time where the server has it, else OpenSearch's,"
            " else a sliced scroll; 'always' Elasticsearch's, 'opensearch' OpenSearch's, 'never'"
            " the scroll."
        ),
    )
    page_size: int = Field(1000, title="Page size", description="Documents per request.")
    slices: int = Field(2, title="Slices", description="Parallel slices per window, 1-32.")
    keep_alive: str = Field("2m", title="Keep alive", description="PIT/scroll keep-alive.")
    request_timeout: float = Field(60.0, title="Timeout (s)", description="Per request.")
    max_retries: int = Field(3, title="Retries", description="Client retries per request.")

    # What the server and the mapping allow, asked once for this block (see probe.py).
    _facts: ServerFacts = PrivateAttr(default_factory=ServerFacts)

    @root_validator(skip_on_failure=True)
    def _connection(cls, values: dict[str, Any]) -> dict[str, Any]:
        if not values.get("hosts") and not values.get("cloud_id"):
            raise ValueError("set hosts (e.g. ['https://es:9200']) or cloud_id")
        methods = [
            name
            for name, present in (
                ("api_key", values.get("api_key")),
                ("username/password", values.get("username") or values.get("password")),
                ("bearer_token", values.get("bearer_token")),
            )
            if present
        ]
        if len(methods) > 1:
            raise ValueError(f"set one auth method, not {' and '.join(methods)}")
        if bool(values.get("username")) != bool(values.get("password")):
            raise ValueError("basic auth needs both username and password")
        return values

    @validator("hosts")
    def _hosts(cls, v: list[str] | None) -> list[str] | None:
        for i, host in enumerate(v or []):
            if has_userinfo(host):
                # The URL would be printed in error messages and stored in plain text; the
                # auth fields are secrets. The message shows the host with its user info masked.
                raise ValueError(
                    f"hosts[{i}]={scrub_url(host)!r} carries credentials in the URL; remove "
                    "them and set username and password (or api_key, or bearer_token), "
                    "which are kept as secrets"
                )
            check_node_url(f"hosts[{i}]", host)
        return v

    @validator("query")
    def _query(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and (not isinstance(v, dict) or len(v) != 1):
            raise ValueError(
                f"query={v!r} must be one query clause, e.g. {{'term': {{'service': 'web'}}}}"
            )
        return v

    _page = in_range("page_size", 10, 10_000)

    _slices = in_range("slices", 1, 32)

    # --- Source protocol ----------------------------------------------------------------------

    async def count(self, window: Window) -> int:
        async with source_errors(self, "count"), connect(self) as client:
            if self.missing_index == "empty" and not await self._index_exists(client):
                return 0
            await self._mapping(client)
            result = await client.count(index=self.index, query=self._window_query(window))
        return int(result["count"])

    async def fingerprint(self, window: Window) -> str | None:
        """Per index: count, sum and max of `_seq_no` (see `fingerprint`); None if unknown."""
        async with source_errors(self, "fingerprint"), connect(self) as client:
            if self.missing_index == "empty" and not await self._index_exists(client):
                return None
            return await window_fingerprint(client, self.index, self._window_query(window))

    async def extract(self, window: Window) -> AsyncIterator[pa.RecordBatch]:
        with gctune.for_bulk_json():
            async for batch in self._extract(window):
                yield batch

    async def _extract(self, window: Window) -> AsyncIterator[pa.RecordBatch]:
        async with source_errors(self, "extract"), connect(self) as client:
            if self.missing_index == "empty" and not await self._index_exists(client):
                return
            shaping = Shaping(
                client, self.timestamp_field, await self._mapping(client), self.columns or {}
            )
            reading = Reading(
                client=client,
                index=self.index,
                query=self._window_query(window),
                search_args=self._search_args(shaping),
                keep_alive=self.keep_alive,
                slices=self.slices,
            )
            async for page in window_pages(reading, await self._pit_api_of(client)):
                yield await shaping.batch(page)

    def _window_query(self, window: Window) -> dict[str, Any]:
        return window_query(window, self.timestamp_field, self.query)

    def _search_args(self, shaping: Shaping) -> dict[str, Any]:
        args: dict[str, Any] = {"size": self.page_size}
        if not shaping.mapping.stamps_from_source:
            # Asking the server to format every hit's timestamp costs it a quarter of its
            # throughput; done only where _source may hold a format we cannot read.
            args["docvalue_fields"] = shaping.docvalue_fields()
        if self.source_includes:
            args["source_includes"] = self.source_includes
        if self.source_excludes:
            args["source_excludes"] = self.source_excludes
        return args

    # --- server facts, asked once -------------------------------------------------------------

    async def _index_exists(self, client: AsyncElasticsearch) -> bool:
        return bool(await client.indices.exists(index=self.index, allow_no_indices=False))

    async def _mapping(self, client: AsyncElasticsearch) -> TimestampMapping:
        mapping = self._facts.mapping
        if mapping is None:
            mapping = await read_mapping(client, self.index, self.timestamp_field)
            self._facts = dataclasses.replace(self._facts, mapping=mapping)
        return mapping

    async def _pit_api_of(self, client: AsyncElasticsearch) -> PitApi:
        """Which point-in-time API to use: "elasticsearch", "opensearch" or "" (a scroll)."""
        if self.point_in_time in _FIXED_PIT_API:
            return _FIXED_PIT_API[self.point_in_time]
        api = self._facts.pit_api
        if api is None:
            api = await find_pit_api(client, self.index)
            self._facts = dataclasses.replace(self._facts, pit_api=api)
        return api
