"""Reading integrators' files: JSON Lines, or CSV with a header, one record per line.

Each line becomes an `InputLine` holding either the parsed record or the reason it could
not be parsed, with its line number, so every bad line can be reported where it is.

CSV columns are field paths: `source_ref`, `location.region`, `person.id_number`,
`persons.0.id_number`, `vehicles.0.plate`; list-of-string columns (`phones`,
`share_scope`) hold values separated by `;`. An empty cell is an absent field.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Iterable, Iterator

LIST_OF_STRINGS = frozenset({"phones", "share_scope"})
INTEGERS = frozenset({"revision"})
FLOATS = frozenset({"location.lat", "location.lon"})


@dataclass(frozen=True)
class InputLine:
    line_no: int
    raw: str
    record: dict | None
    error: str | None = None  # why the line is not a record at all


def detect_format(name: str, first_line: str) -> str:
    """'jsonl' or 'csv', from the file name, else from the first line."""
    lower = name.lower()
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lower.endswith(".csv"):
        return "csv"
    return "jsonl" if first_line.lstrip().startswith("{") else "csv"


def read_jsonl(lines: Iterable[str], start: int = 1) -> Iterator[InputLine]:
    """start: the number of the first line (a batch cut from a longer file keeps the file's numbers)."""
    for no, line in enumerate(lines, start=start):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield InputLine(no, text, None, f"not valid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(record, dict):
            yield InputLine(no, text, None, f"a record must be a JSON object, got {type(record).__name__}")
            continue
        yield InputLine(no, text, record)


def read_csv(lines: Iterable[str], start: int = 2) -> Iterator[InputLine]:
    """start: the number of the first line after the header."""
    lines = iter(lines)
    header_line = next(lines, None)
    if header_line is None:
        return
    header = next(csv.reader([header_line]))
    for no, line in enumerate(lines, start=start):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        cells = next(csv.reader([text]))
        if len(cells) != len(header):
            yield InputLine(no, text, None, f"has {len(cells)} columns, the header has {len(header)}")
            continue
        try:
            yield InputLine(no, text, csv_record(header, cells))
        except ValueError as exc:
            yield InputLine(no, text, None, str(exc))


def csv_record(header: list[str], cells: list[str]) -> dict:
    """One CSV row as a nested record, following the column paths."""
    record: dict = {}
    for path, cell in zip(header, cells):
        path = path.strip()
        if cell == "":
            continue
        if path in LIST_OF_STRINGS:
            value = [v.strip() for v in cell.split(";") if v.strip()]
        elif path in INTEGERS:
            try:
                value = int(cell)
            except ValueError:
                raise ValueError(f"{path}: {cell!r} is not an integer") from None
        elif path in FLOATS:
            try:
                value = float(cell)
            except ValueError:
                raise ValueError(f"{path}: {cell!r} is not a number") from None
        else:
            value = cell
        _put(record, path.split("."), value)
    return record


def _put(target, parts: list[str], value) -> None:
    head, rest = parts[0], parts[1:]
    if not rest:
        target[head] = value
        return
    if rest[0].isdigit():  # persons.0.id_number: a list of records
        items = target.setdefault(head, [])
        index = int(rest[0])
        while len(items) <= index:
            items.append({})
        if len(rest) == 1:
            items[index] = value
        else:
            _put(items[index], rest[1:], value)
        return
    _put(target.setdefault(head, {}), rest, value)


def read_lines(name: str, stream: io.TextIOBase) -> Iterator[InputLine]:
    """Records of a text stream in either format."""
    first = stream.readline()
    if not first:
        return iter(())
    fmt = detect_format(name, first)

    def all_lines():
        yield first
        yield from stream

    return read_jsonl(all_lines()) if fmt == "jsonl" else read_csv(all_lines())
