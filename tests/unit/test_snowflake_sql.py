"""The Snowflake target's SQL, checked as text (values are bound, never formatted in)."""

from __future__ import annotations

import pytest
from ledgerflow.blocks import snowflake_sql as sql
from ledgerflow.errors import ConfigError


def test_copy_with_columns_parses_json_and_forces_the_reload() -> None:
    text = sql.copy_sql(
        "EVENTS",
        "DB.PUBLIC.LF_STAGE",
        ["p/d/w/part-a-00000.parquet"],
        ["_ID", "TS", "DOCUMENT"],
        ["DOCUMENT"],
    )
    assert text == (
        'COPY INTO "EVENTS" ("_ID", "TS", "DOCUMENT") FROM (SELECT $1:_id, $1:ts, '
        'PARSE_JSON($1:document) FROM @"DB"."PUBLIC"."LF_STAGE") '
        "FILES = ('p/d/w/part-a-00000.parquet') FILE_FORMAT = (TYPE = PARQUET) FORCE = TRUE"
    )


def test_copy_without_columns_matches_by_name() -> None:
    text = sql.copy_sql("T", "S", ["a.parquet", "b.parquet"], None)
    assert text.endswith("FORCE = TRUE MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE")
    assert "FILES = ('a.parquet', 'b.parquet')" in text


@pytest.mark.parametrize("name", ["x'); DROP TABLE t; --", "../other/a.parquet", "a b.parquet", ""])
def test_copy_refuses_file_names_that_are_not_plain_paths(name: str) -> None:
    with pytest.raises(ConfigError, match="not a plain relative path"):
        sql.copy_sql("T", "S", [name], None)


@pytest.mark.parametrize("table", ['EVENTS"; DROP TABLE X; --', "a.b.c.d", "1abc", ""])
def test_identifiers_that_try_injection_are_refused(table: str) -> None:
    with pytest.raises(ConfigError, match=r"identifier|empty"):
        sql.delete_sql(table, "TS")


def test_window_bounds_are_parameters() -> None:
    assert sql.delete_sql("EVENTS", "TS") == 'DELETE FROM "EVENTS" WHERE "TS" >= %s AND "TS" < %s'
    assert sql.count_sql("S.EVENTS", "TS") == (
        'SELECT COUNT(*) FROM "S"."EVENTS" WHERE "TS" >= %s AND "TS" < %s'
    )
    assert sql.stamp_sql("EVENTS", "TS", "WINDOW_START", None) == (
        'UPDATE "EVENTS" SET "WINDOW_START" = %s WHERE "TS" >= %s AND "TS" < %s'
    )
    assert sql.stamp_sql("EVENTS", "TS", None, None) is None


def test_the_fence_table_sits_beside_the_data_table() -> None:
    assert sql.fence_table("EVENTS") == "LEDGERFLOW_FENCES"
    assert sql.fence_table("RAW.EVENTS") == "RAW.LEDGERFLOW_FENCES"
    assert sql.fence_table("DB.RAW.EVENTS") == "DB.RAW.LEDGERFLOW_FENCES"
    assert sql.create_fence_table_sql("RAW.LEDGERFLOW_FENCES") == (
        'CREATE TABLE IF NOT EXISTS "RAW"."LEDGERFLOW_FENCES" (PIPELINE_ID VARCHAR NOT NULL, '
        "WINDOW_START TIMESTAMP_TZ NOT NULL, TOKEN NUMBER(38, 0) NOT NULL, "
        "WINDOW_END TIMESTAMP_TZ, TARGET_TABLE VARCHAR)"
    )
    # A fence table an earlier ledgerflow made gains the columns it lacks.
    assert sql.add_fence_columns_sql("RAW.LEDGERFLOW_FENCES") == [
        'ALTER TABLE "RAW"."LEDGERFLOW_FENCES" ADD COLUMN IF NOT EXISTS WINDOW_END TIMESTAMP_TZ',
        'ALTER TABLE "RAW"."LEDGERFLOW_FENCES" ADD COLUMN IF NOT EXISTS TARGET_TABLE VARCHAR',
    ]


def test_the_fence_advances_only_upwards_with_bound_values() -> None:
    text = sql.advance_fence_sql("LEDGERFLOW_FENCES")
    assert text == (
        'MERGE INTO "LEDGERFLOW_FENCES" F USING (SELECT %s AS PIPELINE_ID, '
        "%s::TIMESTAMP_TZ AS WINDOW_START, %s::TIMESTAMP_TZ AS WINDOW_END, %s AS TARGET_TABLE, "
        "%s AS TOKEN) S ON F.PIPELINE_ID = S.PIPELINE_ID AND F.WINDOW_START = S.WINDOW_START "
        "WHEN MATCHED AND F.TOKEN <= S.TOKEN THEN UPDATE SET TOKEN = S.TOKEN, "
        "WINDOW_END = S.WINDOW_END, TARGET_TABLE = S.TARGET_TABLE "
        "WHEN NOT MATCHED THEN INSERT (PIPELINE_ID, WINDOW_START, WINDOW_END, TARGET_TABLE, "
        "TOKEN) VALUES (S.PIPELINE_ID, S.WINDOW_START, S.WINDOW_END, S.TARGET_TABLE, S.TOKEN)"
    )


def test_the_fence_check_reads_overlapping_windows_and_the_tables_owner() -> None:
    assert sql.read_fence_sql("LEDGERFLOW_FENCES") == (
        'SELECT (SELECT MAX(TOKEN) FROM "LEDGERFLOW_FENCES" WHERE PIPELINE_ID = %s '
        "AND WINDOW_START < %s AND (WINDOW_END IS NULL OR WINDOW_END > %s)), "
        '(SELECT MIN(PIPELINE_ID) FROM "LEDGERFLOW_FENCES" WHERE TARGET_TABLE = %s '
        "AND PIPELINE_ID <> %s)"
    )


def test_the_outside_example_looks_only_at_rows_not_stamped_yet() -> None:
    assert sql.outside_example_sql("EVENTS", "TS", "LOADED_AT") == (
        'SELECT "TS" FROM "EVENTS" WHERE "LOADED_AT" IS NULL '
        'AND ("TS" IS NULL OR NOT ("TS" >= %s AND "TS" < %s)) LIMIT 1'
    )


def test_the_default_table_is_documented_shape() -> None:
    assert sql.create_table_sql("EVENTS", "TS", "WINDOW_START", "LOADED_AT") == (
        'CREATE TABLE IF NOT EXISTS "EVENTS" ("_ID" VARCHAR, "_INDEX" VARCHAR, "TS" TIMESTAMP_TZ, '
        '"DOCUMENT" VARIANT, "WINDOW_START" TIMESTAMP_TZ, "LOADED_AT" TIMESTAMP_TZ)'
    )


def test_nested_block_secrets_are_secret_again() -> None:
    from ledgerflow.blocks.nested import revalidated
    from prefect_aws import AwsCredentials

    loaded = AwsCredentials.construct(aws_access_key_id="k", aws_secret_access_key="s")
    assert isinstance(loaded.aws_secret_access_key, str)  # what a nested load gives back
    fixed = revalidated(loaded)
    assert fixed.aws_secret_access_key.get_secret_value() == "s"  # type: ignore[union-attr]
    assert "s" not in repr(fixed.aws_secret_access_key)
