"""Kinds, topics, subjects and the Avro schemas of the repo (schemas/avro/*.avsc)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import fastavro

AVRO_DIR = Path(__file__).resolve().parent / "avro"
KINDS = ("alert", "wanted", "incident")
# Every topic of the bus is named here (ops/topics.yaml declares their partitions and configs);
# code names a topic through these, never as a string of its own.
HIT_TOPIC = "intel.hit"
DLQ_TOPIC = "intel.dlq"
DUPLICATES_TOPIC = "intel.duplicates"  # the dedupe stage's dropped copies (JSON), for the sink
WORKFLOW_TOPIC = "intel.workflow"  # hit follow-up, assistance requests, directives (workflows/, docs/workflows.md)
WORKFLOW_COMMANDS_TOPIC = "intel.workflow.commands"  # the gateway's commands to the workflow job
# the stream jobs' internal topics (formats: stream_jobs/internal.py)
MATCH_REQUESTS_TOPIC = "intel.match.requests"
HIT_CANDIDATES_TOPIC = "intel.hit.candidates"


def input_topic(kind: str) -> str:
    return f"intel.{kind}"


def unique_topic(kind: str) -> str:
    return f"intel.{kind}.unique"


INPUT_TOPICS = tuple(input_topic(k) for k in KINDS)
UNIQUE_TOPICS = tuple(unique_topic(k) for k in KINDS)
ALL_TOPICS = (*INPUT_TOPICS, *UNIQUE_TOPICS, MATCH_REQUESTS_TOPIC, DUPLICATES_TOPIC, HIT_CANDIDATES_TOPIC, HIT_TOPIC,
              DLQ_TOPIC, WORKFLOW_COMMANDS_TOPIC, WORKFLOW_TOPIC)


def subject(topic: str) -> str:
    """Confluent TopicNameStrategy subject of a topic's values."""
    return f"{topic}-value"


# topic -> schema file name (without .avsc)
TOPIC_SCHEMAS = {
    **{input_topic(k): k for k in KINDS},
    **{unique_topic(k): k for k in KINDS},
    HIT_TOPIC: "hit",
    DLQ_TOPIC: "dead_letter",
    WORKFLOW_TOPIC: "workflow",
}


def schema_for_topic(topic: str) -> str:
    try:
        return TOPIC_SCHEMAS[topic]
    except KeyError:
        for kind in KINDS:  # staging topics named after a kind (bench.incident.1f2e...) use its schema
            if f".{kind}" in topic:
                return kind
        raise KeyError(f"no schema is declared for topic {topic!r} (known: {', '.join(TOPIC_SCHEMAS)})") from None


@functools.cache
def schema_text(name: str) -> str:
    return (AVRO_DIR / f"{name}.avsc").read_text(encoding="utf-8")


def load_schema(name: str) -> dict:
    """The schema as parsed JSON (a fresh copy)."""
    return json.loads(schema_text(name))


@functools.cache
def parsed_schema(name: str):
    return fastavro.parse_schema(load_schema(name))
