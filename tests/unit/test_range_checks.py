"""Every numeric range a block checks: both ends allowed, one step past either end refused with
the field, the value and the range (and the note where there is one)."""

from __future__ import annotations

from typing import Any

import pytest
from ledgerflow.blocks.config import PipelineConfig
from ledgerflow.blocks.duckdb_source import DuckDBSource
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.blocks.elasticsearch import ElasticsearchSource
from ledgerflow.blocks.local_stage import LocalStage
from ledgerflow.blocks.s3_stage import S3Stage
from ledgerflow.compat import ValidationError, model_validate
from prefect_aws.credentials import AwsCredentials
from prefect_aws.s3 import S3Bucket


def _s3(**fields: Any) -> S3Stage:
    bucket = S3Bucket(bucket_name="b", credentials=AwsCredentials(region_name="us-east-1"))
    return S3Stage(bucket=bucket, **fields)


BUILD: dict[str, Any] = {
    "config": lambda **f: model_validate(
        PipelineConfig,
        {
            "pipeline_id": "p",
            "source_block": "ledgerflow-duckdb-source/demo",
            "stage_block": "ledgerflow-local-stage/demo",
            "target_block": "ledgerflow-duckdb-target/demo",
            # no backoff, no retries: the total wait across retries is checked on its own
            "max_retry_task": 0,
            "retry_backoff_seconds": 0,
            **f,
        },
    ),
    "duckdb_source": lambda **f: model_validate(DuckDBSource, {"table": "t", **f}),
    "duckdb_target": lambda **f: model_validate(DuckDBTarget, {"path": "t.duckdb", **f}),
    "elasticsearch": lambda **f: model_validate(
        ElasticsearchSource, {"hosts": ["http://h:9200"], "index": "x", **f}
    ),
    "local_stage": lambda **f: model_validate(LocalStage, {"root": "/tmp/stage", **f}),
    "s3_stage": _s3,
}

# (block, field, lowest allowed, highest allowed, below, above, message after "must be between");
# a float field shows a refused value as a float.
RANGES = [
    ("config", "max_retry_task", 0, 10, -1, 11, "0 and 10"),
    ("config", "retry_backoff_seconds", 0, 3600, -0.5, 3601.0, "0 and 3600"),
    ("config", "max_window_attempts", 1, 100, 0, 101, "1 and 100"),
    ("config", "audit_tolerance_percent", 0, 100, -1.0, 100.5, "0 and 100"),
    ("config", "windows_per_run", 1, 100_000, 0, 100_001, "1 and 100000"),
    ("config", "concurrency", 1, 64, 0, 65, "1 and 64"),
    ("duckdb_source", "batch_rows", 1_000, 10_000_000, 999, 10_000_001, "1000 and 10000000"),
    (
        "duckdb_target",
        "threads",
        1,
        1024,
        0,
        1025,
        "1 and 1024, or unset for one per core",
    ),
    ("elasticsearch", "page_size", 10, 10_000, 9, 10_001, "10 and 10000"),
    ("elasticsearch", "slices", 1, 32, 0, 33, "1 and 32"),
    ("local_stage", "target_file_mb", 0.01, 4096, 0.005, 4097.0, "0.01 and 4096"),
    ("s3_stage", "target_file_mb", 1, 5120, 0.5, 5121.0, "1 and 5120"),
    ("s3_stage", "multipart_chunk_mb", 5, 512, 4, 513, "5 and 512 (S3's limits)"),
]


@pytest.mark.parametrize(
    ("block", "field", "lo", "hi", "below", "above", "between"),
    RANGES,
    ids=[f"{r[0]}.{r[1]}" for r in RANGES],
)
def test_each_range_allows_its_ends_and_names_what_is_past_them(
    block: str,
    field: str,
    lo: float,
    hi: float,
    below: float,
    above: float,
    between: str,
) -> None:
    build = BUILD[block]
    for allowed in (lo, hi):
        assert getattr(build(**{field: allowed}), field) == allowed
    for refused in (below, above):
        with pytest.raises(ValidationError) as info:
            build(**{field: refused})
        assert f"{field}={refused!r} must be between {between}" in str(info.value)


def test_an_optional_range_may_stay_unset() -> None:
    assert BUILD["duckdb_target"](threads=None).threads is None
