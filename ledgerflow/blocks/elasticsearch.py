"""`ElasticsearchSource`: exact counts and bounded-memory, parallel window extraction.

Extraction pages with point-in-time + `search_after` + `_shard_doc` where the server has ES PIT,
and with a sliced scroll (cleared at the end) where it does not (OpenSearch-compatible servers).
Both sort on a per-document tiebreaker, so documents that share a timestamp are never skipped or
repeated (the mistake of tapping `search_after` on the timestamp alone).

Each batch holds `_id`, `_index`, the timestamp as a UTC timestamp, the document as JSON text
(for a Snowflake VARIANT) and any mapped columns as text. Documents without the timestamp field
belong to no window: `count` does not count them and `extract` never returns them. A document
whose timestamp is an array belongs to the window of its earliest value, in count and extract.

Fidelity: the document is the server's, number for number (integers beyond 64 bits, decimals
longer than a double); an escaped lone surrogate stays the JSON escape `\\ud800` (UTF-8 cannot
hold it). Epoch millis with a fraction are read from their digits, floored as the server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Literal
from urllib.parse import quote

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from elastic_transport import AiohttpHttpNode, ConnectionTimeout
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport._serializer import OrjsonSerializer
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    AuthenticationException,
    AuthorizationException,
    BadRequestError,
    NotFoundError,
)
from prefect.blocks.core import Block

from ledgerflow import gctune
from ledgerflow.compat import Field, PrivateAttr, SecretStr, root_validator, validator
from ledgerflow.errors import SourceError, SourceTerminalError
from ledgerflow.redact import has_userinfo, scrub_url, scrub_urls
from ledgerflow.windows import Window

DATE_TYPES = ("date", "date_nanos")
DEFAULT_DATE_FORMAT = "strict_date_optional_time||epoch_millis"
# Date formats whose _source values ledgerflow reads itself (ISO 8601 and epoch milliseconds);
# any other format in a mapping makes every hit carry the server-formatted value instead.
READABLE_DATE_FORMATS = frozenset(
    {
        "strict_date_optional_time",
        "date_optional_time",
        "strict_date_optional_time_nanos",
        "strict_date_time",
        "date_time",
        "strict_date_time_no_millis",
        "date_time_no_millis",
        "epoch_millis",
    }
)
_END = object()
# A response is decoded by orjson unless it may hold a number orjson would change: a float with
# 16 or more significant digits (a double keeps 15) or an integer beyond 64 bits. Both need a run
# of at least 17 digits and dots, which `bytes.translate` + `in` finds in a quarter of the time
# orjson takes to decode the page (a regex takes three times as long as orjson).
_DIGITS_AND_DOTS = bytes(0x30 if chr(b) in "0123456789." else 0x20 for b in range(256))
_LONG_NUMBER = b"0" * 17
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_EPOCH_MILLIS = re.compile(r"-?\d+(?:\.\d+)?")


class ExactJsonSerializer(OrjsonSerializer):
    """Decodes responses as the server wrote them: orjson for the common page, the stdlib's
    decoder for the rare one orjson would change or refuse.

    The stdlib path keeps every integer exact (Python ints), reads floats as `Decimal` (the
    digits as written) and accepts an escaped lone surrogate (`"\\ud800"`), which orjson refuses.
    """

    def json_loads(self, data: bytes) -> Any:
        if _LONG_NUMBER not in data.translate(_DIGITS_AND_DOTS):
            with contextlib.suppress(orjson.JSONDecodeError):  # e.g. a lone surrogate escape
                return orjson.loads(data)
        return json.loads(data, parse_float=Decimal)


class PlainJsonNode(AiohttpHttpNode):
    """An HTTP node that sends plain `application/json` instead of Elasticsearch 9's
    compatibility media type, for servers that refuse it (OpenSearch-compatible ones).

    Used only when the block's `compatibility_headers` is off; production Elasticsearch keeps
    the client's default headers.
    """

    async def perform_request(  # type: ignore[override]
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Any = None,
        request_timeout: Any = None,
    ) -> Any:
        if headers:
            headers = headers.copy()
            for name in ("accept", "content-type"):
                value = headers.get(name)
                if value and "vnd.elasticsearch+" in value:
                    headers[name] = value.split(";")[0].replace("vnd.elasticsearch+", "")
        return await super().perform_request(
            method, target, body=body, headers=headers, request_timeout=request_timeout
        )


def iso_millis(value: Any) -> str:
    return str(value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z")


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

    _pit_api: str | None = PrivateAttr(None)  # "elasticsearch", "opensearch", "" (none) once known
    _mapping_checked: bool = PrivateAttr(False)
    # True when every index maps the timestamp with ISO 8601 / epoch formats only, so it can be
    # read from _source; otherwise each hit carries the server-formatted value (docvalue_fields).
    _stamps_from_source: bool = PrivateAttr(False)
    # Indices that map it as `date`, which keeps milliseconds: a finer _source value is truncated.
    _millis_indices: frozenset[str] = PrivateAttr(frozenset())

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
        return v

    @validator("query")
    def _query(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and (not isinstance(v, dict) or len(v) != 1):
            raise ValueError(
                f"query={v!r} must be one query clause, e.g. {{'term': {{'service': 'web'}}}}"
            )
        return v

    @validator("page_size")
    def _page(cls, v: int) -> int:
        if not 10 <= v <= 10_000:
            raise ValueError(f"page_size={v!r} must be between 10 and 10000")
        return v

    @validator("slices")
    def _slices(cls, v: int) -> int:
        if not 1 <= v <= 32:
            raise ValueError(f"slices={v!r} must be between 1 and 32")
        return v

    # --- Source protocol ----------------------------------------------------------------------

    async def count(self, window: Window) -> int:
        async with self._errors("count"), self._connect() as client:
            if self.missing_index == "empty" and not await self._index_exists(client):
                return 0
            await self._check_mapping(client)
            result = await client.count(index=self.index, query=self._window_query(window))
        return int(result["count"])

    async def extract(self, window: Window) -> AsyncIterator[pa.RecordBatch]:
        with gctune.for_bulk_json():
            async for batch in self._extract(window):
                yield batch

    async def _extract(self, window: Window) -> AsyncIterator[pa.RecordBatch]:
        async with self._errors("extract"), self._connect() as client:
            if self.missing_index == "empty" and not await self._index_exists(client):
                return
            await self._check_mapping(client)
            pages: asyncio.Queue[Any] = asyncio.Queue(maxsize=4 * self.slices)
            api = await self._pit_api_of(client)
            # One point in time for every slice: they all read the same snapshot.
            pit_id = await self._open_pit(client, api) if api else None
            workers = [
                asyncio.create_task(self._slice(client, window, i, pit_id, pages))
                for i in range(self.slices)
            ]
            try:
                finished = 0
                while finished < len(workers):
                    page = await pages.get()
                    if page is _END:
                        finished += 1
                    elif isinstance(page, BaseException):
                        raise page
                    else:
                        yield await self._to_batch(client, page)
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                if pit_id is not None:
                    with contextlib.suppress(Exception):  # it expires after keep_alive anyway
                        await self._close_pit(client, api, pit_id)

    # --- paging -------------------------------------------------------------------------------

    async def _slice(
        self,
        client: AsyncElasticsearch,
        window: Window,
        slice_id: int,
        pit_id: str | None,
        out: asyncio.Queue[Any],
    ) -> None:
        try:
            pager = (
                self._pit_pages(client, window, slice_id, pit_id)
                if pit_id is not None
                else self._scroll_pages(client, window, slice_id)
            )
            async for hits in pager:
                await out.put(hits)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await out.put(exc)
        finally:
            await out.put(_END)

    def _slice_clause(self, slice_id: int) -> dict[str, int] | None:
        return {"id": slice_id, "max": self.slices} if self.slices > 1 else None

    def _docvalue_fields(self) -> list[dict[str, str]]:
        return [{"field": self.timestamp_field, "format": "strict_date_optional_time_nanos"}]

    def _search_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"size": self.page_size}
        if not self._stamps_from_source:
            # Asking the server to format every hit's timestamp costs it a quarter of its
            # throughput; done only where _source may hold a format we cannot read.
            args["docvalue_fields"] = self._docvalue_fields()
        if self.source_includes:
            args["source_includes"] = self.source_includes
        if self.source_excludes:
            args["source_excludes"] = self.source_excludes
        return args

    async def _pit_pages(
        self, client: AsyncElasticsearch, window: Window, slice_id: int, pit_id: str
    ) -> AsyncIterator[list[Any]]:
        """search_after over the point in time, ordered by _shard_doc: a total order, so
        documents sharing a timestamp are never skipped or repeated."""
        after: list[Any] | None = None
        while True:
            extra: dict[str, Any] = {}
            if (clause := self._slice_clause(slice_id)) is not None:
                extra["slice"] = clause
            if after is not None:
                extra["search_after"] = after
            response = await client.search(
                pit={"id": pit_id, "keep_alive": self.keep_alive},
                query=self._window_query(window),
                sort=[{"_shard_doc": "asc"}],
                track_total_hits=False,
                **self._search_args(),
                **extra,
            )
            pit_id = response.get("pit_id", pit_id)
            hits = response["hits"]["hits"]
            if not hits:
                return
            yield hits
            after = hits[-1]["sort"]

    async def _open_pit(self, client: AsyncElasticsearch, api: str, keep_alive: str = "") -> str:
        keep_alive = keep_alive or self.keep_alive
        if api == "opensearch":
            response = await client.perform_request(
                "POST",
                f"/{quote(self.index, safe=',*')}/_search/point_in_time",
                params={"keep_alive": keep_alive},
                headers={"accept": "application/json"},
            )
            return str(response["pit_id"])
        opened = await client.open_point_in_time(index=self.index, keep_alive=keep_alive)
        return str(opened["id"])

    async def _close_pit(self, client: AsyncElasticsearch, api: str, pit_id: str) -> None:
        if api == "opensearch":
            await client.perform_request(
                "DELETE",
                "/_search/point_in_time",
                headers={"accept": "application/json", "content-type": "application/json"},
                body={"pit_id": [pit_id]},
            )
        else:
            await client.close_point_in_time(id=pit_id)

    async def _scroll_pages(
        self, client: AsyncElasticsearch, window: Window, slice_id: int
    ) -> AsyncIterator[list[Any]]:
        extra: dict[str, Any] = {}
        if (clause := self._slice_clause(slice_id)) is not None:
            extra["slice"] = clause
        response = await client.search(
            index=self.index,
            scroll=self.keep_alive,
            query=self._window_query(window),
            sort=["_doc"],
            **self._search_args(),
            **extra,
        )
        scroll_id = response.get("_scroll_id")
        try:
            while hits := response["hits"]["hits"]:
                yield hits
                response = await client.scroll(scroll_id=scroll_id, scroll=self.keep_alive)
                scroll_id = response.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                with contextlib.suppress(Exception):
                    await client.clear_scroll(scroll_id=scroll_id)

    # --- shaping ------------------------------------------------------------------------------

    def _window_query(self, window: Window) -> dict[str, Any]:
        """The window's documents: those whose earliest timestamp value is in [start, end).

        A range query alone matches a document whose timestamp is an array in every window
        that any of its values falls in, so it would be counted and loaded more than once. The
        must_not clause leaves it to the window of its earliest value (the value `ts` holds);
        for a single value it changes nothing.
        """
        fmt = "strict_date_optional_time"
        field = self.timestamp_field
        start, end = iso_millis(window.start), iso_millis(window.end)
        clauses: list[dict[str, Any]] = [
            {"range": {field: {"gte": start, "lt": end, "format": fmt}}}
        ]
        if self.query:
            clauses.append(self.query)
        earlier = {"range": {field: {"lt": start, "format": fmt}}}
        return {"bool": {"filter": clauses, "must_not": [earlier]}}

    async def _to_batch(
        self, client: AsyncElasticsearch, hits: list[Mapping[str, Any]]
    ) -> pa.RecordBatch:
        indices = pa.array([h["_index"] for h in hits], pa.string())
        data: dict[str, pa.Array] = {
            "_id": pa.array([h["_id"] for h in hits], pa.string()),
            "_index": indices,
            "ts": await self._timestamps(client, hits, indices),
            "document": pa.array([_json_text(h.get("_source", {})) for h in hits], pa.string()),
        }
        for column, path in (self.columns or {}).items():
            data[column] = _strings([_text(_dig(h.get("_source", {}), path)) for h in hits])
        return pa.RecordBatch.from_pydict(data)

    async def _timestamps(
        self, client: AsyncElasticsearch, hits: list[Mapping[str, Any]], indices: pa.Array
    ) -> pa.Array:
        """Each hit's timestamp as UTC microseconds: from _source where the mapping allows,
        with the server's own formatting fetched for any value this cannot read."""
        if not self._stamps_from_source:
            return _utc_micros(pa.array([self._docvalue(h) for h in hits], pa.string()))
        values = [_source_value(h.get("_source") or {}, self.timestamp_field) for h in hits]
        parsed = _parse_stamps(values)
        unread = [i for i, v in enumerate(parsed) if v is None]
        if unread:
            fetched = await self._server_stamps(client, [hits[i] for i in unread])
            for i in unread:
                parsed[i] = fetched.get((hits[i]["_index"], hits[i]["_id"]))
        stamps = pa.array(parsed, _UTC_US)
        if not self._millis_indices:
            return stamps
        in_millis = pc.is_in(indices, pa.array(self._millis_indices, pa.string()))
        truncated = pc.floor_temporal(stamps, unit="millisecond")
        return pc.if_else(in_millis, truncated, stamps)

    async def _server_stamps(
        self, client: AsyncElasticsearch, hits: list[Mapping[str, Any]]
    ) -> dict[tuple[str, str], int | None]:
        """The server-formatted timestamps of a few hits (values _source gives in a form this
        cannot read: a custom format, an array, a nested object)."""
        found: dict[tuple[str, str], int | None] = {}
        by_index: dict[str, list[str]] = {}
        for h in hits:
            by_index.setdefault(h["_index"], []).append(h["_id"])
        for index, ids in by_index.items():
            response = await client.search(
                index=index,
                query={"ids": {"values": ids}},
                docvalue_fields=self._docvalue_fields(),
                source=False,
                size=len(ids),
            )
            for h in response["hits"]["hits"]:
                stamp = _utc_micros(pa.array([self._docvalue(h)], pa.string()))[0]
                found[(index, h["_id"])] = stamp.value
        return found

    def _docvalue(self, hit: Mapping[str, Any]) -> str | None:
        """The timestamp as the server formatted it (docvalue_fields), if the hit carries it;
        of several values the earliest, the one that places the document in a window."""
        values: list[str] = (hit.get("fields") or {}).get(self.timestamp_field, [None])
        if len(values) == 1:
            return values[0]
        # The formatted texts differ in length, so they are compared as instants, not text.
        micros = _utc_micros(pa.array(values, pa.string())).cast(pa.int64()).to_pylist()
        return str(values[micros.index(min(micros))])

    # --- server facts -------------------------------------------------------------------------

    async def _index_exists(self, client: AsyncElasticsearch) -> bool:
        return bool(await client.indices.exists(index=self.index, allow_no_indices=False))

    async def _check_mapping(self, client: AsyncElasticsearch) -> None:
        if self._mapping_checked:
            return
        found = await client.indices.get_field_mapping(
            index=self.index, fields=self.timestamp_field
        )
        kinds: dict[str, str | None] = {}
        formats: set[str] = set()
        for index, body in found.items():
            mapping = body.get("mappings", {}).get(self.timestamp_field, {}).get("mapping", {})
            leaf: dict[str, Any] = next(iter(mapping.values()), {}) if mapping else {}
            kinds[index] = leaf.get("type")
            formats.update(str(leaf.get("format") or DEFAULT_DATE_FORMAT).split("||"))
        wrong = {i: k for i, k in kinds.items() if k not in DATE_TYPES}
        if wrong:
            raise SourceTerminalError(
                f"timestamp_field={self.timestamp_field!r} is not mapped as a date in "
                + ", ".join(f"{i} ({k or 'unmapped'})" for i, k in sorted(wrong.items()))
                + f"; it must be one of {DATE_TYPES} in every index {self.index!r} matches"
            )
        self._stamps_from_source = formats <= READABLE_DATE_FORMATS
        self._millis_indices = frozenset(i for i, k in kinds.items() if k == "date")
        self._mapping_checked = True

    async def _pit_api_of(self, client: AsyncElasticsearch) -> str:
        """Which point-in-time API to use: "elasticsearch", "opensearch" or "" (a scroll)."""
        fixed = {"always": "elasticsearch", "opensearch": "opensearch", "never": ""}
        if self.point_in_time in fixed:
            return fixed[self.point_in_time]
        if self._pit_api is None:
            self._pit_api = ""
            for api in ("elasticsearch", "opensearch"):
                try:
                    pit_id = await self._open_pit(client, api, keep_alive="10s")
                except ApiError as exc:
                    if "index_not_found" in str(exc) or exc.meta.status not in (400, 404, 405):
                        raise
                    continue  # no such route on this server
                await self._close_pit(client, api, pit_id)
                self._pit_api = api
                break
        return self._pit_api

    # --- client and errors --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncElasticsearch]:
        """A client for one count or extraction. Prefect may run each task on its own event
        loop, and an aiohttp session belongs to one loop, so clients are not kept."""
        kwargs: dict[str, Any] = {
            "request_timeout": self.request_timeout,
            "max_retries": self.max_retries,
            "retry_on_timeout": True,
            "verify_certs": self.verify_certs,
            # orjson parses responses about 2-3x faster than the stdlib; decoding pages is most
            # of an extraction's CPU. The stdlib takes over for a page orjson would change.
            "serializer": ExactJsonSerializer(),
        }
        if self.hosts:
            kwargs["hosts"] = self.hosts
        if self.cloud_id:
            kwargs["cloud_id"] = self.cloud_id
        if self.ca_certs:
            kwargs["ca_certs"] = self.ca_certs
        if self.api_key:
            kwargs["api_key"] = self.api_key.get_secret_value()
        if self.username and self.password:
            kwargs["basic_auth"] = (self.username, self.password.get_secret_value())
        if self.bearer_token:
            kwargs["bearer_auth"] = self.bearer_token.get_secret_value()
        if not self.compatibility_headers:
            kwargs["node_class"] = PlainJsonNode
        client = AsyncElasticsearch(**kwargs)
        try:
            yield client
        finally:
            await client.close()

    @contextlib.asynccontextmanager
    async def _errors(self, action: str) -> AsyncIterator[None]:
        nodes = self.cloud_id or ", ".join(scrub_url(h) for h in self.hosts or [])
        where = f"Elasticsearch {nodes} index {self.index!r}"
        try:
            yield
        except (AuthenticationException, AuthorizationException) as exc:
            raise SourceTerminalError(
                f"{where} refused the credentials during {action} ({exc.meta.status}): check "
                "api_key, username/password or bearer_token"
            ) from None
        except NotFoundError as exc:
            if "index_not_found" in str(exc):
                raise SourceTerminalError(
                    f"{where} does not exist; create it, fix 'index', or set "
                    "missing_index='empty' to treat a missing index as an empty window"
                ) from None
            raise SourceError(f"{where}: {action} failed: {scrub_urls(str(exc))}") from None
        except BadRequestError as exc:
            raise SourceTerminalError(
                f"{where} rejected the {action} request (is the extra query valid DSL?): "
                f"{exc.message}: {_reason(exc.body)}"
            ) from None
        except (TransportConnectionError, ConnectionTimeout) as exc:
            raise SourceError(
                f"cannot reach {where} during {action}: {scrub_urls(str(exc))}"
            ) from None
        except ApiError as exc:
            kind = (
                SourceTerminalError
                if 400 <= exc.meta.status < 500 and exc.meta.status != 429
                else SourceError
            )
            raise kind(f"{where}: {action} failed ({exc.meta.status}): {exc.message}") from None


_UTC_NS = pa.timestamp("ns", tz="UTC")
_UTC_US = pa.timestamp("us", tz="UTC")


def _utc_micros(stamps: pa.Array) -> pa.Array:
    """ISO 8601 strings with a zone (or nulls) as UTC microseconds (nanoseconds truncated)."""
    return stamps.cast(_UTC_NS).cast(_UTC_US, safe=False)


def _source_value(source: Mapping[str, Any], path: str) -> Any:
    """A field of _source by its mapping path: a literal dotted key, or nested objects."""
    return source[path] if path in source else _dig(source, path)


def _parse_stamps(values: list[Any]) -> list[int | None]:
    """Timestamps as ES stores them in _source, as UTC epoch microseconds; None where this
    cannot read a value (the caller asks the server for those)."""
    if values and all(isinstance(v, str) for v in values):
        try:
            micros: list[int | None] = (
                _utc_micros(pa.array(values, pa.string())).cast(pa.int64()).to_pylist()
            )
            return micros
        except (pa.ArrowInvalid, ValueError):
            pass  # some value is naive, partial or odd: one by one
    return [_parse_stamp(v) for v in values]


def _parse_stamp(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # epoch_millis
        return value * 1000
    if isinstance(value, float):
        # Decoded by orjson only when its text had at most 15 significant digits, so the
        # shortest repr is that text's exact value (a 16th digit sends the page to Decimal).
        return _millis_to_micros(repr(value))
    if isinstance(value, Decimal):
        return _millis_to_micros(str(value))
    if not isinstance(value, str):
        return None  # an array, an object or a null: the server's docvalue says which
    text = value.strip().replace(",", ".")
    if _EPOCH_MILLIS.fullmatch(text) and not (len(text) == 4 and text.isdigit()):
        return _millis_to_micros(text)  # four digits are a year, as ES reads it
    date, _, clock = text.partition("T")
    candidates = [text]
    if not clock:  # yyyy, yyyy-MM or yyyy-MM-dd: the start of that period, UTC
        year, _, rest = date.partition("-")
        month, _, day = rest.partition("-")
        candidates = [f"{year}-{month or '01'}-{day or '01'}T00:00:00Z"]
    elif not (clock.endswith("Z") or "+" in clock or "-" in clock):
        candidates.append(text + "Z")  # no zone: Elasticsearch reads it as UTC
    for candidate in candidates:
        try:
            micros = _utc_micros(pa.array([candidate], pa.string())).cast(pa.int64())[0]
        except (pa.ArrowInvalid, ValueError):
            continue
        return int(micros.as_py())
    return None


def _millis_to_micros(text: str) -> int:
    """Epoch milliseconds written as text (a fraction allowed) as epoch microseconds, floored
    from the exact decimal the way Elasticsearch reads it: never through a float, whose rounding
    moved `...399999.9995` onto the next millisecond and into the next window."""
    return int((Decimal(text) * 1000).to_integral_value(rounding=ROUND_FLOOR))


def _json_text(value: Any) -> str:
    """`value` as JSON text, numbers and strings exactly as the server sent them."""
    try:
        return orjson.dumps(value, default=_exact_number).decode()
    except TypeError:  # an integer beyond 64 bits or a lone surrogate: orjson cannot write it
        return _exact_json(value)


def _exact_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))  # the digits as the server wrote them
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _exact_json(value: Any) -> str:
    """The slow writer for what orjson refuses. A lone surrogate stays the JSON escape the
    server sent (`"\\ud800"`): the text is valid UTF-8 and reads back as the same code unit."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json_string(k)}:{_exact_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_exact_json(v) for v in value) + "]"
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    return orjson.dumps(value).decode()  # true, false, null, a float


def _json_string(text: str) -> str:
    return _escape_surrogates(json.dumps(text, ensure_ascii=False))


def _escape_surrogates(text: str) -> str:
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _strings(values: list[str | None]) -> pa.Array:
    """Text values as an Arrow column; a lone surrogate (not encodable as UTF-8) is escaped."""
    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError:
        return pa.array([v and _escape_surrogates(v) for v in values], pa.string())


def _dig(document: Mapping[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return _json_text(value)


def _reason(body: Any) -> str:
    """The server's own words for a rejected request."""
    if isinstance(body, dict):
        error = body.get("error", {})
        if isinstance(error, dict):
            cause = (error.get("root_cause") or [{}])[0]
            return str(cause.get("reason") or error.get("reason") or error)
        return str(error)
    return str(body)
