"""Real local peers for the production path: moto's S3 server and fakesnow's Snowflake server.

fakesnow runs COPY INTO from S3 through DuckDB's httpfs extension, which this kit loads from the
`duckdb-extension-httpfs` wheel and points at the moto endpoint (DESIGN.md, "Test infrastructure").
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb_extension_httpfs
import fakesnow
from ledgerflow.blocks.s3_stage import S3Stage
from ledgerflow.blocks.snowflake_target import SnowflakeTarget
from moto.server import ThreadedMotoServer
from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters
from prefect_snowflake.credentials import SnowflakeCredentials
from prefect_snowflake.database import SnowflakeConnector

_start_fakesnow = fakesnow.server  # the function; importing fakesnow.server shadows it
import fakesnow.server as fakesnow_app  # noqa: E402

KEY, SECRET, REGION = "ledgerflow-test-key", "ledgerflow-test-secret", "us-east-1"


@dataclass(frozen=True)
class Peers:
    s3_endpoint: str
    snowflake: dict[str, Any]

    def credentials(self, key: str = KEY, secret: str = SECRET) -> AwsCredentials:
        return AwsCredentials(
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name=REGION,
            aws_client_parameters=AwsClientParameters(endpoint_url=self.s3_endpoint),
        )

    def new_bucket(self) -> str:
        name = f"lf-{uuid.uuid4().hex[:12]}"
        self.credentials().get_s3_client().create_bucket(Bucket=name)
        return name

    def stage(self, bucket: str, **fields: Any) -> S3Stage:
        return S3Stage(
            bucket=S3Bucket(bucket_name=bucket, credentials=self.credentials()), **fields
        )

    def connector(self, database: str) -> SnowflakeConnector:
        creds = SnowflakeCredentials(
            account=self.snowflake["account"],
            user=self.snowflake["user"],
            password=self.snowflake["password"],
        )
        return SnowflakeConnector(
            credentials=creds, database=database, warehouse="LEDGERFLOW_WH", schema="PUBLIC"
        )

    def connect_args(self) -> dict[str, Any]:
        keep = ("host", "port", "protocol", "session_parameters")
        return {k: v for k, v in self.snowflake.items() if k in keep} | {"network_timeout": 30}

    def target(self, bucket: str, database: str, **fields: Any) -> SnowflakeTarget:
        """A target over a fresh database with an external stage on the bucket's prefix."""
        target = SnowflakeTarget(
            connector=self.connector(database),
            table="EVENTS",
            stage="LEDGERFLOW_STAGE",
            stage_url=f"s3://{bucket}/ledgerflow/",
            create_table=True,
            connect_args=self.connect_args(),
            **fields,
        )
        with contextlib.closing(self.sql_connection(database)) as conn:
            conn.cursor().execute(
                f"CREATE STAGE IF NOT EXISTS LEDGERFLOW_STAGE URL='s3://{bucket}/ledgerflow/'"
            )
        return target

    def sql_connection(self, database: str) -> Any:
        import snowflake.connector

        return snowflake.connector.connect(
            **{k: v for k, v in self.snowflake.items() if k != "network_timeout"},
            database=database,
            schema="PUBLIC",
            network_timeout=30,
        )


@contextlib.contextmanager
def s3_auth_enforced() -> Iterator[None]:
    """moto's S3 server checks credentials against its IAM users while this block runs."""
    from moto import settings

    before = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    try:
        yield
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = before


@contextlib.contextmanager
def refusing_peer(status: int, body: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """A loopback HTTP server answering every request with `status` and the JSON `body`: the
    way a real service refuses credentials. Yields (host, port)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    payload = json.dumps(body).encode()

    class Refuse(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_HEAD = do_PUT = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def local_peers() -> Iterator[Peers]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    host, port = moto.get_host_and_port()
    try:
        with _start_fakesnow() as kwargs:
            # uvicorn set these to INFO as it started: one line per Snowflake request otherwise.
            for noisy in ("uvicorn", "uvicorn.access", "uvicorn.error", "fakesnow.server"):
                logging.getLogger(noisy).setLevel(logging.WARNING)
            duck = fakesnow_app.shared_fs.duck_conn
            extension = next(
                Path(duckdb_extension_httpfs.__file__).parent.rglob("httpfs.duckdb_extension")
            )
            duck.execute(f"LOAD '{extension}'")
            duck.execute(
                f"CREATE OR REPLACE SECRET ledgerflow_moto (TYPE S3, KEY_ID '{KEY}', "
                f"SECRET '{SECRET}', REGION '{REGION}', ENDPOINT '{host}:{port}', "
                "URL_STYLE 'path', USE_SSL false)"
            )
            yield Peers(f"http://{host}:{port}", dict(kwargs))
    finally:
        moto.stop()
