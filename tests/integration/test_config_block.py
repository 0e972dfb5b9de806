"""PipelineConfig through a real Prefect API: what an older ledgerflow saved still loads."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from ledgerflow.blocks.config import PipelineConfig, load_final_config, validate_config
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentCreate, BlockSchemaCreate

pytestmark = pytest.mark.usefixtures("prefect_harness")

BASE: dict[str, Any] = {
    "pipeline_id": "legacy_pipeline",
    "source_block": "ledgerflow-duckdb-source/demo",
    "stage_block": "ledgerflow-local-stage/demo",
    "target_block": "ledgerflow-duckdb-target/demo",
    "granularity": "30m",
}

# The field the previous PipelineConfig declared (and never stored anywhere): its schema as that
# code registered it, and a value as its `save` wrote it.
_DEFAULT_RECORD_SCHEMA: dict[str, Any] = {
    "title": "DefaultRecord",
    "type": "object",
    "properties": {
        "source_name": {"title": "Source name", "default": "elasticsearch", "type": "string"},
        "target_name": {"title": "Target name", "default": "snowflake", "type": "string"},
        "pipeline_id": {"title": "Pipeline ID", "type": "string"},
    },
}
_DEFAULT_RECORD = {
    "source_name": "duckdb",
    "target_name": "duckdb",
    "pipeline_id": "legacy_pipeline",
}


async def _save_as_the_previous_code(name: str) -> None:
    """A block document with a `default_record` key, under the schema the previous code made."""
    await PipelineConfig.register_type_and_schema()
    fields = copy.deepcopy(PipelineConfig.schema())
    fields["properties"]["default_record"] = {
        "title": "Ledger row labels",
        "allOf": [{"$ref": "#/definitions/DefaultRecord"}],
    }
    fields.setdefault("definitions", {})["DefaultRecord"] = _DEFAULT_RECORD_SCHEMA
    data = validate_config(BASE)._to_block_document(name=name).data
    async with get_client() as client:
        block_type = await client.read_block_type_by_slug(PipelineConfig.get_block_type_slug())
        schema = await client.create_block_schema(
            BlockSchemaCreate(
                fields=fields,
                block_type_id=block_type.id,
                capabilities=[],
                version=PipelineConfig.get_block_schema_version(),
            )
        )
        await client.create_block_document(
            BlockDocumentCreate(
                name=name,
                data={**data, "default_record": _DEFAULT_RECORD},
                block_schema_id=schema.id,
                block_type_id=block_type.id,
            )
        )


async def test_a_config_saved_with_default_record_still_loads_without_it() -> None:
    await _save_as_the_previous_code("legacy-default-record")

    config = await PipelineConfig.load("legacy-default-record")
    assert config.pipeline_id == "legacy_pipeline"
    assert config.granularity == "30m"
    assert "default_record" not in config.dict()
    assert not hasattr(config, "default_record")

    final = await load_final_config("legacy-default-record")
    assert final.pipeline_id == "legacy_pipeline"


async def test_a_loaded_legacy_config_saves_and_loads_again() -> None:
    await _save_as_the_previous_code("legacy-resaved")
    config = await PipelineConfig.load("legacy-resaved")
    config.concurrency = 2
    await config.save("legacy-resaved", overwrite=True)

    # Prefect merges an overwrite into the stored data (merge_existing_data), so the old key may
    # stay in the document; every load drops it again.
    again = await PipelineConfig.load("legacy-resaved")
    assert again.concurrency == 2
    assert "default_record" not in again.dict()


async def test_a_new_config_has_no_default_record_in_its_schema_or_document() -> None:
    assert "default_record" not in PipelineConfig.schema()["properties"]
    await validate_config(BASE).save("fresh-config", overwrite=True)
    async with get_client() as client:
        document = await client.read_block_document_by_name(
            "fresh-config", PipelineConfig.get_block_type_slug()
        )
    assert "default_record" not in document.data
    assert (await PipelineConfig.load("fresh-config")).pipeline_id == "legacy_pipeline"
