"""The client: how a block connects, the node for OpenSearch-compatible servers, and the
translation of client errors into ledgerflow's retryable and terminal source errors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from elastic_transport import AiohttpHttpNode, ConnectionTimeout
from elastic_transport import ConnectionError as TransportConnectionError
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    AuthenticationException,
    AuthorizationException,
    BadRequestError,
    NotFoundError,
)

from ledgerflow.blocks.checks import client_settings
from ledgerflow.blocks.elasticsearch.jsontext import ExactJsonSerializer
from ledgerflow.errors import SourceError, SourceTerminalError
from ledgerflow.redact import scrub_url, scrub_urls

if TYPE_CHECKING:
    from ledgerflow.blocks.elasticsearch.source import ElasticsearchSource


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


@contextlib.asynccontextmanager
async def connect(block: ElasticsearchSource) -> AsyncIterator[AsyncElasticsearch]:
    """A client for one count or extraction. Prefect may run each task on its own event
    loop, and an aiohttp session belongs to one loop, so clients are not kept."""
    kwargs: dict[str, Any] = {
        "request_timeout": block.request_timeout,
        "max_retries": block.max_retries,
        "retry_on_timeout": True,
        "verify_certs": block.verify_certs,
        # orjson parses responses about 2-3x faster than the stdlib; decoding pages is most
        # of an extraction's CPU. The stdlib takes over for a page orjson would change.
        "serializer": ExactJsonSerializer(),
    }
    if block.hosts:
        kwargs["hosts"] = block.hosts
    if block.cloud_id:
        kwargs["cloud_id"] = block.cloud_id
    if block.ca_certs:
        kwargs["ca_certs"] = block.ca_certs
    if block.api_key:
        kwargs["api_key"] = block.api_key.get_secret_value()
    if block.username and block.password:
        kwargs["basic_auth"] = (block.username, block.password.get_secret_value())
    if block.bearer_token:
        kwargs["bearer_auth"] = block.bearer_token.get_secret_value()
    if not block.compatibility_headers:
        kwargs["node_class"] = PlainJsonNode
    with client_settings("Elasticsearch source"):
        client = AsyncElasticsearch(**kwargs)
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def source_errors(block: ElasticsearchSource, action: str) -> AsyncIterator[None]:
    """Client errors as SourceError (retry) or SourceTerminalError (fix the config), naming
    the server without its credentials."""
    nodes = block.cloud_id or ", ".join(scrub_url(h) for h in block.hosts or [])
    where = f"Elasticsearch {nodes} index {block.index!r}"
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
        raise SourceError(f"cannot reach {where} during {action}: {scrub_urls(str(exc))}") from None
    except ApiError as exc:
        kind = (
            SourceTerminalError
            if 400 <= exc.meta.status < 500 and exc.meta.status != 429
            else SourceError
        )
        raise kind(f"{where}: {action} failed ({exc.meta.status}): {exc.message}") from None


def _reason(body: Any) -> str:
    """The server's own words for a rejected request."""
    if isinstance(body, dict):
        error = body.get("error", {})
        if isinstance(error, dict):
            cause = (error.get("root_cause") or [{}])[0]
            return str(cause.get("reason") or error.get("reason") or error)
        return str(error)
    return str(body)
