"""The Elasticsearch source block and its parts; `ElasticsearchSource` is the block.

Saved blocks load by their type slug (`ledgerflow-elasticsearch-source`), which Prefect maps to
the class through its registry; the class is still importable from this module, as it was when
the block was one module.
"""

from ledgerflow.blocks.elasticsearch.jsontext import ExactJsonSerializer
from ledgerflow.blocks.elasticsearch.source import ElasticsearchSource
from ledgerflow.blocks.elasticsearch.stamps import (
    DATE_TYPES,
    DEFAULT_DATE_FORMAT,
    READABLE_DATE_FORMATS,
    iso_millis,
)
from ledgerflow.blocks.elasticsearch.transport import PlainJsonNode

__all__ = [
    "DATE_TYPES",
    "DEFAULT_DATE_FORMAT",
    "READABLE_DATE_FORMATS",
    "ElasticsearchSource",
    "ExactJsonSerializer",
    "PlainJsonNode",
    "iso_millis",
]
