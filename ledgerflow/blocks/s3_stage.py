"""`S3Stage`: windows staged as Parquet parts in S3, through prefect-aws's `S3Bucket`.

A window lives under `{bucket_folder}/{prefix}/{location}/` where `location` is
`{pipeline_id}/{target_day}/{window start}`. Parts are written to a local temporary file one at a
time, so memory stays at one row group, and uploaded with boto3's managed transfer (multipart
above `multipart_chunk_mb`). All boto3 calls run in worker threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pyarrow as pa
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from prefect.blocks.core import Block
from prefect_aws.s3 import S3Bucket

from ledgerflow.blocks.checks import client_settings, forbid_unknown_fields, in_range
from ledgerflow.blocks.nested import revalidated
from ledgerflow.blocks.parquet_parts import Part, write_parts
from ledgerflow.compat import Field, PrivateAttr, validator
from ledgerflow.errors import StageError, StageTerminalError
from ledgerflow.ports import Manifest, StagedFile
from ledgerflow.redact import scrub_urls

T = TypeVar("T")
_TERMINAL_CODES = {
    "NoSuchBucket": "the bucket does not exist",
    "AccessDenied": "access was denied",
    "InvalidAccessKeyId": "the access key id is not known",
    "SignatureDoesNotMatch": "the secret access key does not match",
    "AllAccessDisabled": "access to the bucket is disabled",
}


class S3Stage(Block):
    """Stages each window as Parquet parts under one S3 prefix per window.

    Example:
        Load a saved stage:
        ```python
        from ledgerflow.blocks.s3_stage import S3Stage

        stage = S3Stage.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Ledgerflow S3 Stage"
    _block_type_slug = "ledgerflow-s3-stage"
    _description = "Stage windows as Parquet parts in S3 (composes prefect-aws S3Bucket)."
    _known_fields = forbid_unknown_fields()

    bucket: S3Bucket = Field(..., title="Bucket", description="A prefect-aws S3Bucket block.")
    prefix: str = Field(
        "ledgerflow", title="Prefix", description="Key prefix under the bucket folder."
    )
    target_file_mb: float = Field(
        128.0, title="Part size (MB)", description="Parquet bytes per part before a new part."
    )
    multipart_chunk_mb: int = Field(
        16, title="Multipart chunk (MB)", description="Upload in parts of this size above it."
    )

    _client: Any = PrivateAttr(None)

    @validator("prefix")
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not v or ".." in v.split("/"):
            raise ValueError(f"prefix={v!r} must be a non-empty key prefix without '..'")
        return v

    _size = in_range("target_file_mb", 1, 5 * 1024)

    _chunk = in_range("multipart_chunk_mb", 5, 512, note=" (S3's limits)")

    # --- Stage protocol -----------------------------------------------------------------------

    async def clear(self, location: str) -> None:
        prefix = self.key_prefix(location)

        def run() -> None:
            client = self.client
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket.bucket_name, Prefix=prefix):
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if keys:  # a page holds at most 1,000 keys, the most one delete may take
                    result = client.delete_objects(
                        Bucket=self.bucket.bucket_name, Delete={"Objects": keys, "Quiet": True}
                    )
                    if result.get("Errors"):
                        raise StageError(
                            f"S3 could not delete {result['Errors'][:3]} under {prefix}"
                        )

        await self._call(run, f"clear s3://{self.bucket.bucket_name}/{prefix}")

    async def write(
        self, location: str, batches: AsyncIterator[pa.RecordBatch], *, name_prefix: str
    ) -> Manifest:
        prefix = self.key_prefix(location)
        config = TransferConfig(
            multipart_threshold=self.multipart_chunk_mb * 1024 * 1024,
            multipart_chunksize=self.multipart_chunk_mb * 1024 * 1024,
        )
        uploaded: list[str] = []

        async def publish(part: Part) -> StagedFile:
            key = f"{prefix}{part.name}"

            def upload() -> None:
                self.client.upload_file(part.path, self.bucket.bucket_name, key, Config=config)
                os.unlink(part.path)

            await self._call(upload, f"upload s3://{self.bucket.bucket_name}/{key}")
            uploaded.append(key)
            return StagedFile(f"s3://{self.bucket.bucket_name}/{key}", part.rows, part.bytes)

        workdir = await asyncio.to_thread(tempfile.mkdtemp, prefix="ledgerflow-s3-")
        try:
            files = await write_parts(
                batches,
                name_prefix=name_prefix,
                target_bytes=int(self.target_file_mb * 1024 * 1024),
                publish=publish,
                workdir=workdir,
            )
        except BaseException:
            # A failed write leaves nothing behind: no half window in the stage.
            with contextlib.suppress(Exception):
                await self._call(
                    lambda: self._delete(uploaded), f"remove {len(uploaded)} partial part(s)"
                )
            raise
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
        return Manifest(location, tuple(files))

    async def files(self, location: str) -> list[StagedFile]:
        prefix = self.key_prefix(location)

        def run() -> list[StagedFile]:
            found: list[StagedFile] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket.bucket_name, Prefix=prefix):
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith(".parquet"):
                        uri = f"s3://{self.bucket.bucket_name}/{obj['Key']}"
                        found.append(StagedFile(uri, 0, int(obj["Size"])))
            return found

        return await self._call(run, f"list s3://{self.bucket.bucket_name}/{prefix}")

    # --- helpers ------------------------------------------------------------------------------

    def key_prefix(self, location: str) -> str:
        """The window's key prefix, ending in '/'."""
        parts = [self.bucket.bucket_folder.strip("/"), self.prefix, location.strip("/")]
        return "/".join(p for p in parts if p) + "/"

    @property
    def client(self) -> Any:
        # boto3 clients are thread-safe and not bound to an event loop, so one is kept.
        if self._client is None:
            with client_settings("S3 stage"):
                self._client = revalidated(self.bucket.credentials).get_s3_client()
        return self._client

    def _delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            objects = [{"Key": k} for k in keys[i : i + 1000]]
            self.client.delete_objects(
                Bucket=self.bucket.bucket_name, Delete={"Objects": objects, "Quiet": True}
            )

    async def _call(self, fn: Callable[[], T], action: str) -> T:
        try:
            try:
                return await asyncio.to_thread(fn)
            except S3UploadFailedError as exc:
                # boto3's managed upload wraps the ClientError that says why; classify that.
                reason = exc.__cause__ or exc.__context__
                if isinstance(reason, ClientError):
                    raise reason from None
                raise StageError(f"S3 failed to {action}: {scrub_urls(str(exc))}") from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _TERMINAL_CODES:
                raise StageTerminalError(
                    f"S3 refused to {action}: {_TERMINAL_CODES[code]} ({code}); check the "
                    f"S3Bucket block's bucket_name {self.bucket.bucket_name!r} and its credentials"
                ) from None
            raise StageError(f"S3 failed to {action}: {code}: {scrub_urls(str(exc))}") from None
        except EndpointConnectionError as exc:
            raise StageError(f"cannot reach S3 to {action}: {scrub_urls(str(exc))}") from None
        except BotoCoreError as exc:
            raise StageError(f"S3 failed to {action}: {scrub_urls(str(exc))}") from None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.get("__private_attribute_values__", {}).pop("_client", None)
        return state
