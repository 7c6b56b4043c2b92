"""The Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body.

`SchemaCodec` registers the repo's schemas under TopicNameStrategy subjects (with
BACKWARD_TRANSITIVE compatibility) and caches: the id of each topic's schema after the
first registration, and each writer schema parsed once per id. No message pays a
registry round trip.
"""
from __future__ import annotations

import io
import json
import struct

import fastavro

from schemas.catalog import TOPIC_SCHEMAS, load_schema, parsed_schema, schema_for_topic, schema_text, subject

_HEADER = struct.Struct(">bI")
COMPATIBILITY = "BACKWARD_TRANSITIVE"


class WireFormatError(ValueError):
    """Bytes that are not a decodable Confluent wire-format Avro message; str() says why."""


class RegistryUnavailable(RuntimeError):
    """The schema registry did not answer (not reachable, timed out, a server error): not the
    record's fault. Not a ValueError, so nothing dead-letters a record for it: the jobs worker
    ends (its supervisor restarts it and it reads the record again) and the sink waits and asks
    again. Until 2026-12-02 it was a WireFormatError: a worker or sink that met a schema id not yet
    cached while the registry was down dead-lettered the record, or the hit, as undecodable."""


def registry_did_not_answer(exc: BaseException) -> bool:
    """A registry client's error that says the registry could not be asked, as opposed to an
    answer (a 4xx: no such schema, or a refused one)."""
    status = getattr(exc, "http_status_code", None)
    if isinstance(status, int) and status > 0:
        return status >= 500 or status in (408, 429)
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"TransportError", "ConnectionError", "Timeout", "TimeoutException"}) or \
        isinstance(exc, (OSError, TimeoutError))


def ask_registry(what: str, call):
    """call() (a registry request about `what`), its errors told apart: RegistryUnavailable when
    the registry did not answer, WireFormatError when it answered that it has no such schema."""
    try:
        return call()
    except Exception as exc:
        if registry_did_not_answer(exc):
            raise RegistryUnavailable(f"the schema registry did not answer for {what}: {type(exc).__name__}: {exc}") from exc
        raise WireFormatError(f"{what} is unknown to the registry: {exc}") from None


def split_header(data: bytes) -> tuple[int, memoryview]:
    """(schema id, Avro body) of a wire-format message."""
    if len(data) < 5:
        raise WireFormatError(f"not Confluent wire format: {len(data)} bytes, the header alone is 5")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != 0:
        raise WireFormatError(f"not Confluent wire format: magic byte is {magic}, expected 0")
    return schema_id, memoryview(data)[5:]


def encode_with_id(schema_id: int, parsed, record: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(_HEADER.pack(0, schema_id))
    fastavro.schemaless_writer(buf, parsed, record)
    return buf.getvalue()


def decode_body(body, parsed, schema_id: int) -> dict:
    buf = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buf, parsed, None)
    except Exception as exc:  # EOFError, UnicodeDecodeError, IndexError, ... from a corrupt body
        raise WireFormatError(f"Avro body does not decode with schema id {schema_id}: {type(exc).__name__}: {exc}") from None
    if buf.tell() != len(body):
        raise WireFormatError(f"{len(body) - buf.tell()} trailing bytes after the Avro record (schema id {schema_id})")
    return record


class SchemaCodec:
    def __init__(self, registry=None, url: str | None = None):
        if registry is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            if url is None:  # the caller's settings name it (ops.settings: registry_url)
                raise TypeError("SchemaCodec needs a registry client or the registry's url")
            registry = SchemaRegistryClient({"url": url})
        self.registry = registry
        self._topic_ids: dict[str, int] = {}
        self._topic_parsed: dict[str, object] = {}
        self._by_id: dict[int, object] = {}

    def register(self, topic: str, schema_name: str | None = None) -> int:
        """Register the repo's schema for topic under '<topic>-value'; returns the schema id."""
        cached = self._topic_ids.get(topic)
        if cached is not None:
            return cached
        from confluent_kafka.schema_registry import Schema

        name = schema_name or schema_for_topic(topic)
        subj = subject(topic)
        try:
            self.registry.set_compatibility(subject_name=subj, level=COMPATIBILITY)
        except Exception:
            # a new subject may need its first version before a per-subject level can be set
            pass
        try:
            schema_id = self.registry.register_schema(subj, Schema(schema_text(name), "AVRO"))
        except Exception as exc:
            if registry_did_not_answer(exc):
                raise RegistryUnavailable(f"the schema registry did not answer registering {subj}: "
                                          f"{type(exc).__name__}: {exc}") from exc
            raise
        try:
            self.registry.set_compatibility(subject_name=subj, level=COMPATIBILITY)
        except Exception:
            pass
        self._topic_ids[topic] = schema_id
        self._topic_parsed[topic] = parsed_schema(name)
        self._by_id.setdefault(schema_id, parsed_schema(name))
        return schema_id

    def encode(self, topic: str, record: dict) -> bytes:
        schema_id = self._topic_ids.get(topic)
        if schema_id is None:
            schema_id = self.register(topic)
        return encode_with_id(schema_id, self._topic_parsed[topic], record)

    def _writer_schema(self, schema_id: int):
        parsed = self._by_id.get(schema_id)
        if parsed is None:
            text = ask_registry(f"schema id {schema_id}", lambda: self.registry.get_schema(schema_id).schema_str)
            parsed = self._by_id[schema_id] = fastavro.parse_schema(json.loads(text))
        return parsed

    def decode_with_id(self, data: bytes) -> tuple[int, dict]:
        schema_id, body = split_header(data)
        return schema_id, decode_body(body, self._writer_schema(schema_id), schema_id)

    def decode(self, data: bytes) -> dict:
        return self.decode_with_id(data)[1]


def strip_logical_types(schema):
    """A copy of an Avro schema (parsed JSON) without logicalType annotations."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    return schema


class RawDecoder:
    """bytes -> dict with timestamps as epoch milliseconds, dates as day numbers, uuids as text.

    For the stream jobs and the sink: they compare and store numbers, and fastavro's
    logical-type conversion (datetime, UUID objects) would cost time on every record and
    then need converting back. The writer schema is fetched once per id.
    """

    def __init__(self, fetch_schema_str):
        self._fetch = fetch_schema_str  # schema id -> schema JSON text (e.g. the registry)
        self._parsed: dict[int, object] = {}

    @classmethod
    def for_registry(cls, url: str) -> "RawDecoder":
        from confluent_kafka.schema_registry import SchemaRegistryClient

        client = SchemaRegistryClient({"url": url})
        return cls(lambda schema_id: client.get_schema(schema_id).schema_str)

    def __call__(self, data: bytes) -> dict:
        schema_id, body = split_header(data)
        parsed = self._parsed.get(schema_id)
        if parsed is None:
            text = ask_registry(f"schema id {schema_id}", lambda: self._fetch(schema_id))
            parsed = self._parsed[schema_id] = fastavro.parse_schema(strip_logical_types(json.loads(text)))
        return decode_body(body, parsed, schema_id)


def register_all(codec: SchemaCodec) -> dict[str, int]:
    """Register every topic's schema; returns topic -> schema id."""
    return {topic: codec.register(topic) for topic in TOPIC_SCHEMAS}


def writer_schema_json(name: str) -> dict:
    return load_schema(name)
