"""A loopback HTTP proxy that lets Elasticsearch clients talk to osmem-server.

Elasticsearch 9 clients (elasticsearch-py, the Go client inside ingestr) send the compatibility
media type `application/vnd.elasticsearch+json; compatible-with=9`, which osmem answers with 406.
The proxy rewrites `Content-Type` and `Accept` to plain `application/json` and passes everything
else through both ways, bodies untouched (no decompression), so both contenders of the peer
benchmark send exactly the same kind of request to the same server through the same hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

# Connection-level headers belong to each hop, not to the message (RFC 9110, 7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
    }
)


def plain_json(value: str) -> str:
    """`application/vnd.elasticsearch+json; compatible-with=9` -> `application/json`."""
    if "vnd.elasticsearch+" not in value:
        return value
    return value.split(";")[0].replace("vnd.elasticsearch+", "").strip()


def _app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=1024**3)
    sessions: list[ClientSession] = []

    async def open_session(app: web.Application) -> None:
        sessions.append(
            ClientSession(
                connector=TCPConnector(limit=64),
                timeout=ClientTimeout(total=600),
                auto_decompress=False,  # pass compressed bodies on as they came
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            )
        )

    async def close_session(app: web.Application) -> None:
        for session in sessions:
            await session.close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        for name in list(headers):
            if name.lower() in ("content-type", "accept"):
                headers[name] = plain_json(headers[name])
        body = await request.read()
        async with sessions[0].request(
            request.method,
            upstream + request.path_qs,
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as reply:
            payload = await reply.read()
            out = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=reply.status, headers=out, body=payload)

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


@contextlib.contextmanager
def serving(upstream: str) -> Iterator[str]:
    """Run the proxy on 127.0.0.1 (a free port) in a thread; yield its URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, object] = {}

    async def start() -> web.AppRunner:
        runner = web.AppRunner(_app(upstream.rstrip("/")), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and isinstance(server, asyncio.base_events.Server)
        box["port"] = server.sockets[0].getsockname()[1]
        return runner

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            box["runner"] = loop.run_until_complete(start())
        except BaseException as exc:  # surfaced in the caller's thread below
            box["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, name="es-proxy", daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in box:
        raise RuntimeError(f"the Elasticsearch proxy did not start: {box['error']}")
    if "port" not in box:
        raise RuntimeError("the Elasticsearch proxy did not start within 30 s")
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:
        runner = box["runner"]
        assert isinstance(runner, web.AppRunner)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
