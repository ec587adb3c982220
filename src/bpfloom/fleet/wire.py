"""The fleet's message format: subjects, headers, and the two payload encodings.

One NATS message carries a batch of records (100 to 1000, bounded by bytes and by a
flush interval) of one host, one tool and one kind, on the subject
``bpfloom.<host>.<tool>`` (alerts: ``bpfloom.<host>.alerts``). Its headers say what
it holds, so a collector decodes it without guessing:

=================  ====================================================================
``Nats-Msg-Id``    ``<host>:<boot id>:<sequence>``: JetStream drops a second message
                   with the same id within the stream's duplicate window, so a resend
                   after a lost acknowledgement is not a duplicate. The boot id is drawn
                   at random when the agent starts (one run of a command is one boot);
                   the sequence counts the agent's messages from 1.
``Content-Type``   ``application/x-ndjson``: one JSON object per line, exactly what
                   ``--json`` prints; or ``application/vnd.apache.arrow.stream``: one
                   Arrow IPC stream holding the raw records (the C struct's fields, as
                   ``-o x.parquet`` writes them) made from the numpy batches.
``Bpfloom-Host``   the agent's host name (a subject token)
``Bpfloom-Tool``   the command that traced: ``execsnoop``, ``detect``, the object's
                   name for ``bpfloom run``
``Bpfloom-Kind``   ``events`` (the records), ``summary`` (what a tool prints every
                   interval or at exit: histogram rows, per-goroutine summaries) or
                   ``alerts`` (``detect``'s alerts); summaries and alerts are always
                   JSON lines
``Bpfloom-Count``  how many records the payload holds
``Bpfloom-Time``   when the batch was sealed, Unix seconds on the agent's clock
``Bpfloom-Type``   the C struct of Arrow records (``event``, ``exec_event`` ...)
=================  ====================================================================
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

SUBJECT_ROOT = "bpfloom"
ALERTS = "alerts"

MSG_ID = "Nats-Msg-Id"
CONTENT_TYPE = "Content-Type"
HOST = "Bpfloom-Host"
TOOL = "Bpfloom-Tool"
KIND = "Bpfloom-Kind"
COUNT = "Bpfloom-Count"
TIME = "Bpfloom-Time"
TYPE = "Bpfloom-Type"

JSON_LINES = "application/x-ndjson"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
FORMATS = {"json": JSON_LINES, "arrow": ARROW_STREAM}
KINDS = ("events", "summary", "alerts")

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def check_token(value: str, what: str) -> str:
    """``value`` if it can be one token of a subject (letters, digits, ``_``, ``-``; at
    most 64), else ``ValueError`` naming ``what``: a dot would add a level, ``*`` and
    ``>`` are wildcards, and white space ends a subject in the protocol."""
    if not _TOKEN.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} cannot be a NATS subject token: use 1 to 64 letters, "
            "digits, '_' or '-'"
        )
    return value


def default_host_name() -> str:
    """This machine's host name as a token: characters a token cannot hold (the dots
    of a fully qualified name) become ``_``."""
    name = _NOT_TOKEN.sub("_", socket.gethostname())[:64]
    return name or "localhost"


def subject(host: str, tool: str, kind: str = "events") -> str:
    """``bpfloom.<host>.<tool>``, or ``bpfloom.<host>.alerts`` for alerts."""
    return f"{SUBJECT_ROOT}.{host}.{ALERTS if kind == 'alerts' else tool}"


def message_id(host: str, boot: str, sequence: int) -> str:
    return f"{host}:{boot}:{sequence}"


def json_payload(lines: Sequence[str]) -> bytes:
    """JSON lines (each already one JSON text) as one payload."""
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def decode_json(payload: bytes) -> list[dict[str, Any]]:
    """The records of a JSON-lines payload. Raises ``ValueError`` on anything that is
    not one JSON object per line."""
    records = []
    for line in payload.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("a line that is not a JSON object")
        records.append(record)
    return records


def arrow_payload(table: Any) -> bytes:
    """An Arrow table as one IPC stream (schema, then its record batches)."""
    import pyarrow as pa

    out = pa.BufferOutputStream()
    with pa.ipc.new_stream(out, table.schema) as writer:
        writer.write_table(table)
    data: bytes = out.getvalue().to_pybytes()
    return data


def decode_arrow(payload: bytes) -> Any:
    """The Arrow table of an IPC stream payload (``pyarrow.Table``)."""
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()


def header(headers: Mapping[str, str] | None, name: str, default: str = "") -> str:
    """A header's value (headers may be missing on messages not sent by bpfloom)."""
    if not headers:
        return default
    return str(headers.get(name, default))
