"""Confluent wire-format decoding for the jobs: timestamps stay epoch milliseconds.

The jobs compare and forward timestamps, and put whole records into hits as JSON; fastavro's
logical-type conversion (datetime objects) would cost time on every event and then need
converting back. So the writer schema is parsed with its logical types removed.
"""
from __future__ import annotations

import io
import json
import struct

import fastavro

_HEADER = struct.Struct(">bI")


def strip_logical_types(schema):
    """A copy of an Avro schema (parsed JSON) without logicalType annotations."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    return schema


class RawDecoder:
    """bytes -> dict, with the writer schema fetched once per schema id."""

    def __init__(self, fetch_schema_str):
        self._fetch = fetch_schema_str  # schema id -> schema JSON text (e.g. the registry)
        self._parsed: dict[int, dict] = {}

    def __call__(self, data: bytes) -> dict:
        if len(data) < 5:
            raise ValueError(f"not Confluent wire format: {len(data)} bytes, the header alone is 5")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != 0:
            raise ValueError(f"not Confluent wire format: magic byte is {magic}, expected 0")
        parsed = self._parsed.get(schema_id)
        if parsed is None:
            try:
                text = self._fetch(schema_id)
            except Exception as exc:
                raise ValueError(f"schema id {schema_id} is unknown to the registry: {exc}") from None
            parsed = self._parsed[schema_id] = fastavro.parse_schema(strip_logical_types(json.loads(text)))
        buf = io.BytesIO(data)
        buf.seek(5)
        try:
            record = fastavro.schemaless_reader(buf, parsed, None)
        except Exception as exc:  # fastavro raises EOFError, UnicodeDecodeError, IndexError, ...
            raise ValueError(f"Avro body does not decode with schema id {schema_id}: {type(exc).__name__}: {exc}") from None
        if buf.tell() != len(data):
            raise ValueError(f"Avro body has {len(data) - buf.tell()} trailing bytes after the record (schema id {schema_id})")
        return record


def registry_fetcher(registry_url: str):
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient({"url": registry_url})
    return lambda schema_id: client.get_schema(schema_id).schema_str
