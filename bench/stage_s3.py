"""S3 stage write throughput: S3Stage.write vs a bare boto3 upload of the same Parquet bytes.

Target (issue 5): at least 0.8x the bare upload's MB/s, and peak RSS flat as the window grows.
A second baseline is what one writes by hand: the same batches into one Parquet file with
pyarrow's defaults, then one upload (time per row; its file is larger).
moto's S3 server runs in its own process; each contender runs in its own process too.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

from bench.common import free_port, median, run_measured, show

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str]) -> tuple[dict[str, float], float]:
    _, peak, out = run_measured(args, cwd=ROOT)
    return json.loads(out.strip().splitlines()[-1]), peak


def _contender(
    mode: str, endpoint: str, bucket: str, rows: int, files: str
) -> tuple[dict[str, float], float]:
    """One `bench.stage_worker` run: its JSON result and its peak RSS."""
    return _run(
        [sys.executable, "-m", "bench.stage_worker", mode, endpoint, bucket, str(rows), files]
    )


def main(repeat: int = 3, sizes: tuple[int, ...] = (500_000, 2_000_000)) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    rows_out: list[list[object]] = []
    rss: dict[int, float] = {}
    ratios: list[float] = []
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        )
        for n in sizes:
            ours, theirs, mem, ours_rows, naive_rows = [], [], [], [], []
            for r in range(repeat):
                bucket = f"bench-{n}-{r}"
                s3.create_bucket(Bucket=bucket)
                with tempfile.TemporaryDirectory() as files:
                    a, peak = _contender("ledgerflow", endpoint, bucket, n, files)
                    b, _ = _contender("boto3", endpoint, bucket, n, files)
                    c, _ = _contender("naive", endpoint, bucket, n, files)
                assert a["rows"] == n and a["bytes"] == b["bytes"], (a, b)
                ours_rows.append(n / a["seconds"])
                naive_rows.append(n / c["seconds"])
                ours.append(a["bytes"] / a["seconds"] / 1e6)
                theirs.append(b["bytes"] / b["seconds"] / 1e6)
                mem.append(peak)
                size_mb = a["bytes"] / 1e6
            rss[n] = median(mem)
            ratios.append(median(ours) / median(theirs))
            naive_ratio = median(ours_rows) / median(naive_rows)
            rows_out.append(
                [
                    f"bare boto3 upload ({n:,} rows, {size_mb:.0f} MB)",
                    median(theirs),
                    "-",
                    1.0,
                    "-",
                    "-",
                ]
            )
            rows_out.append(
                [
                    f"by hand: pyarrow file + upload ({n:,} rows, {c['bytes'] / 1e6:.0f} MB)",
                    "-",
                    median(naive_rows),
                    "-",
                    1.0,
                    "-",
                ]
            )
            rows_out.append(
                [
                    f"ledgerflow S3Stage.write ({n:,} rows)",
                    median(ours),
                    median(ours_rows),
                    median(ours) / median(theirs),
                    naive_ratio,
                    rss[n],
                ]
            )
    finally:
        server.terminate()
        server.wait()
    show(
        f"S3 stage write into moto (own process), median of {repeat}",
        ["contender", "MB/s", "rows/s", "x bare upload", "x by hand", "peak RSS (MB)"],
        rows_out,
    )
    small, big = sizes[0], sizes[-1]
    print(
        f"S3Stage.write / bare upload at {big:,} rows: {ratios[-1]:.2f}x (target >= 0.80), "
        f"/ by hand: {naive_ratio:.2f}x; "
        f"peak RSS {rss[small]:.0f} MB -> {rss[big]:.0f} MB ({rss[big] / rss[small]:.2f}x)"
    )
