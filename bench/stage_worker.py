"""One contender of the S3 stage benchmark, in its own process (own peak RSS).

`python -m bench.stage_worker ledgerflow|boto3|naive ENDPOINT BUCKET ROWS FILES_DIR` prints
`{"rows": N, "bytes": B, "seconds": S}`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bench.common import own_peak_mb

BATCH = 50_000


POOL = 8  # distinct batches, cycled: 400,000 different documents


def _pool() -> list[pa.RecordBatch]:
    """Source-shaped batches (~175 bytes a row, every document different, as in a real index:
    each carries its own id and timestamp), built once so that the timed part measures the
    stage, not the generator. 8 batches are ~70 MB apart when they repeat, far beyond what
    Parquet's dictionary or zstd's window can exploit."""
    tails = pa.array(
        [
            f',"service":"web","status":{200 + j % 5},"latency_ms":{j % 997},'
            f'"path":"/api/v2/items/{j * 7919 % 1000003}","user":"u{j % 4999:05d}"}}'
            for j in range(BATCH)
        ],
        pa.string(),
    )
    index = pa.array(["logs-web"] * BATCH, pa.string())
    start = int(datetime(2025, 3, 9, 10, tzinfo=UTC).timestamp() * 1_000_000)
    pool = []
    for i in range(POOL):
        ids = pc.add(pa.array(range(BATCH), pa.int64()), i * BATCH)
        micros = pc.add(ids, start)
        id_text = pc.binary_join_element_wise("doc-", ids.cast(pa.string()), "")
        documents = pc.binary_join_element_wise(
            '{"id":"', id_text, '","ts_us":', micros.cast(pa.string()), tails, ""
        )
        ts = micros.cast(pa.timestamp("us", tz="UTC"))
        pool.append(
            pa.RecordBatch.from_arrays(
                [id_text, index, ts, documents], names=["_id", "_index", "ts", "document"]
            )
        )
    return pool


async def batches(rows: int, pool: list[pa.RecordBatch]) -> AsyncIterator[pa.RecordBatch]:
    """`rows` rows in batches of BATCH, the last one short (a smoke run is smaller than one)."""
    full, rest = divmod(rows, BATCH)
    for i in range(full):
        yield pool[i % len(pool)]
    if rest:
        yield pool[full % len(pool)].slice(0, rest)


def credentials(endpoint: str) -> Any:
    from ledgerflow.compat import model_validate
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    fields = {
        "aws_access_key_id": "bench",
        "aws_secret_access_key": "bench",
        "region_name": "us-east-1",
        "aws_client_parameters": AwsClientParameters(endpoint_url=endpoint),
    }
    return model_validate(AwsCredentials, fields)


async def ledgerflow(
    endpoint: str, bucket: str, rows: int, files_dir: str
) -> tuple[int, int, float]:
    """S3Stage.write: Arrow batches to Parquet parts to S3 (what the pipeline does)."""
    from ledgerflow.blocks.s3_stage import S3Stage
    from ledgerflow.compat import model_validate
    from prefect_aws import S3Bucket

    s3 = S3Bucket(bucket_name=bucket, credentials=credentials(endpoint))
    stage = model_validate(S3Stage, {"bucket": s3, "target_file_mb": 32})
    pool = _pool()
    assert stage.client is not None  # made before the clock starts, as the baselines' are
    started = time.perf_counter()
    manifest = await stage.write("bench/w", batches(rows, pool), name_prefix="part")
    seconds = time.perf_counter() - started
    # Keep the same Parquet bytes locally for the bare upload to send (not timed).
    client = stage.client
    Path(files_dir).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - after the timing
    for f in manifest.files:
        key = f.uri.split(f"s3://{bucket}/", 1)[1]
        client.download_file(bucket, key, str(Path(files_dir) / Path(key).name))
    return manifest.rows, manifest.bytes, seconds


def bare(endpoint: str, bucket: str, files_dir: str) -> tuple[int, int, float]:
    """The baseline: boto3 uploading the very same Parquet files, one after another."""
    from boto3.s3.transfer import TransferConfig

    client = credentials(endpoint).get_s3_client()
    config = TransferConfig(
        multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024
    )
    total = 0
    started = time.perf_counter()
    for path in sorted(Path(files_dir).glob("*.parquet")):
        client.upload_file(str(path), bucket, f"bare/{path.name}", Config=config)
        total += path.stat().st_size
    return 0, total, time.perf_counter() - started


def naive(endpoint: str, bucket: str, rows: int, files_dir: str) -> tuple[int, int, float]:
    """What one writes by hand: the same batches into one Parquet file (pyarrow's defaults),
    then one boto3 upload. No parts, no overlap, no cleanup on failure."""
    import pyarrow.parquet as pq

    client = credentials(endpoint).get_s3_client()
    pool = _pool()

    async def drain(writer: pq.ParquetWriter) -> None:
        async for batch in batches(rows, pool):
            writer.write_batch(batch)

    path = Path(files_dir) / "naive.parquet"
    started = time.perf_counter()
    writer = pq.ParquetWriter(str(path), pool[0].schema, compression="zstd")
    asyncio.run(drain(writer))
    writer.close()
    client.upload_file(str(path), bucket, "naive/naive.parquet")
    seconds = time.perf_counter() - started
    return rows, path.stat().st_size, seconds


def main() -> None:
    mode, endpoint, bucket, rows, files_dir = sys.argv[1:6]
    if mode == "ledgerflow":
        count, size, seconds = asyncio.run(ledgerflow(endpoint, bucket, int(rows), files_dir))
    elif mode == "naive":
        count, size, seconds = naive(endpoint, bucket, int(rows), files_dir)
    else:
        count, size, seconds = bare(endpoint, bucket, files_dir)
    print(json.dumps({"rows": count, "bytes": size, "seconds": seconds, "peak_mb": own_peak_mb()}))


if __name__ == "__main__":
    main()
