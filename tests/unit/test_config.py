"""PipelineConfig: every field of the seed's load_final_config, each bad value explained."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from ledgerflow.blocks.config import PipelineConfig, validate_config
from ledgerflow.cli import app
from ledgerflow.errors import ConfigError
from typer.testing import CliRunner

BASE: dict[str, Any] = {
    "pipeline_id": "main_pipeline",
    "source_block": "ledgerflow-duckdb-source/demo",
    "stage_block": "ledgerflow-local-stage/demo",
    "target_block": "ledgerflow-duckdb-target/demo",
}


def test_the_seed_defaults_are_the_defaults() -> None:
    config = validate_config(BASE)
    assert config.timezone == "America/Los_Angeles"
    assert (config.x_time_back, config.granularity) == ("1d", "2h")
    assert config.stale_threshold_hours == 2
    assert config.cron_schedule == "0 */2 * * *"
    assert config.max_retry_task == 3
    assert config.check_fields == ["key_x", "key_y", "key_z"]
    assert config.claim_order == "oldest_first"
    assert config.lag == timedelta(days=1) and config.step == timedelta(hours=2)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("timezone", "Mars/Olympus", "not a known IANA timezone"),
        ("granularity", "2x", "not a duration"),
        ("granularity", "7h", "does not divide a day"),
        ("x_time_back", "-1d", "not a duration"),
        ("pipeline_id", "", "pipeline_id='' is not allowed"),
        ("pipeline_id", "drop table;", "is not allowed"),
        pytest.param(  # a stable id: pytest-xdist's workers must collect the same names
            "start",
            (datetime.now(UTC) + timedelta(days=3)).isoformat(),
            "is in the future",
            id="start-in-three-days-is in the future",
        ),
        ("start", "2025-01-01T00:00:00", "has no UTC offset"),
        ("start", "yesterday", "start"),
        ("stale_threshold_hours", 0, "must be > 0"),
        ("max_retry_task", -1, "between 0 and 10"),
        ("concurrency", 0, "between 1 and 64"),
        ("windows_per_run", 0, "between 1 and 100000"),
        ("audit_tolerance_percent", 101, "between 0 and 100"),
        ("claim_order", "random", "claim_order"),
        ("check_fields", ["key_q"], "check_fields entry 'key_q' is unknown"),
        ("email_list", ["not-an-email"], "not an email address"),
        ("cron_schedule", "every hour", "not a valid 5-field cron"),
        ("source_block", "just-a-name", "not a block slug"),
        ("key_x_hook", "nocolon", "must be 'package.module:function'"),
    ],
)
def test_each_bad_value_names_field_value_and_what_is_allowed(
    field: str, value: object, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({**BASE, field: value}, name="prod")
    message = str(info.value)
    assert "pipeline config 'prod' is invalid" in message
    assert expected in message
    assert field.split(".")[0] in message


def test_a_retry_backoff_that_cannot_fit_inside_the_stale_threshold_is_refused() -> None:
    # 600 x (2^4 - 1) = 9000s of waits against a 2h (7200s) threshold.
    with pytest.raises(ConfigError) as info:
        validate_config({**BASE, "retry_backoff_seconds": 600, "max_retry_task": 4})
    message = str(info.value)
    assert "retry_backoff_seconds=600 with max_retry_task=4" in message
    assert "600 x (2^4 - 1) = 9000s" in message and "stale_threshold_hours=2 (7200s)" in message
    # The same retries fit a longer threshold, and the edge itself fits.
    validate_config(
        {**BASE, "retry_backoff_seconds": 600, "max_retry_task": 4, "stale_threshold_hours": 3}
    )
    validate_config({**BASE, "retry_backoff_seconds": 480, "max_retry_task": 4})


def test_several_bad_values_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({**BASE, "granularity": "7h", "timezone": "Nowhere"})
    assert "granularity" in str(info.value) and "timezone" in str(info.value)


def test_start_is_normalised_to_utc() -> None:
    config = validate_config({**BASE, "start": "2025-03-08T00:00:00-08:00"})
    assert config.start == datetime(2025, 3, 8, 8, tzinfo=UTC)


def test_key_hooks_import_and_explain_failures() -> None:
    config = validate_config({**BASE, "key_y_hook": "ledgerflow.windows:window_seconds"})
    assert set(config.key_hooks()) == {"key_y"}
    broken = validate_config({**BASE, "key_x_hook": "no.such.module:fn"})
    with pytest.raises(ConfigError, match=r"key_x_hook='no\.such\.module:fn' cannot be imported"):
        broken.key_hooks()


def test_config_is_a_prefect_block() -> None:
    assert PipelineConfig.get_block_type_slug() == "ledgerflow-pipeline-config"
    # Every field reaches the Prefect UI form with a title and a description.
    schema = PipelineConfig.schema()
    assert schema["block_type_slug"] == "ledgerflow-pipeline-config"
    assert set(schema["properties"]) == set(PipelineConfig.__fields__)
    assert set(schema["required"]) == {"pipeline_id", "source_block", "stage_block", "target_block"}
    for name, prop in schema["properties"].items():
        assert prop.get("title") and prop.get("description"), name
    # What `save` would send comes back as the same config through `load`'s path.
    config = validate_config({**BASE, "granularity": "30m", "start": "2025-03-01T00:00:00Z"})
    document = config._to_block_document(
        name="prod",
        block_schema_id=uuid4(),
        block_type_id=uuid4(),
    )
    assert document.block_type is not None
    assert document.block_type.name == "Ledgerflow Pipeline Config"
    loaded = PipelineConfig._from_block_document(document)
    assert loaded._block_document_name == "prod"
    fields = list(PipelineConfig.__fields__)
    assert [getattr(loaded, f) for f in fields] == [getattr(config, f) for f in fields]


runner = CliRunner()


def test_plan_json_shows_the_dst_day() -> None:
    result = runner.invoke(
        app,
        [
            "plan",
            "--timezone",
            "America/Los_Angeles",
            "--granularity",
            "2h",
            "--start",
            "2025-03-09T08:00:00Z",
            "--end",
            "2025-03-10T07:00:00Z",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    windows = json.loads(result.stdout)
    assert len(windows) == 12
    assert windows[1] == {
        "start": "2025-03-09T10:00:00Z",
        "end": "2025-03-09T11:00:00Z",
        "target_day": "2025-03-09",
        "time_interval": "2h",
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--granularity", "7h"], "does not divide a day"),
        (["--timezone", "Nope/Nowhere"], "not a known IANA timezone"),
        # Was the plain date "2025-03-09", now read as midnight in --timezone: an instant
        # without an offset is still refused.
        (["--start", "2025-03-09T00:00"], "no UTC offset"),
        (["--start", "2025-03-10"], "must be after"),  # the date is midnight UTC here
        (["--end", "2025-03-01T00:00:00Z"], "must be after"),
    ],
)
def test_plan_refuses_bad_input_with_exit_2(args: list[str], expected: str) -> None:
    base = {
        "--timezone": "UTC",
        "--granularity": "2h",
        "--start": "2025-03-09T00:00:00Z",
        "--end": "2025-03-10T00:00:00Z",
    }
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = runner.invoke(app, ["plan", *[x for kv in base.items() for x in kv]])
    assert result.exit_code == 2
    assert expected in result.output.replace("\n", " ")
