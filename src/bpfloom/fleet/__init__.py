"""The fleet: events and alerts of many hosts through NATS JetStream.

Agents publish with ``--sink nats://HOST:PORT`` (``bpfloom.sinks.nats.NatsSink``);
collectors consume with ``bpfloom collect`` or, in Python, ``bpfloom.collect(...)``, a
source the ``Pipeline`` reads like a ring buffer (``fleet.source``). The message format
is ``fleet.wire``; ``docs/fleet.md`` explains the design.
"""

from __future__ import annotations

from ..rules import DEFAULT_SCHEMA
from ..rules._loader import Schema

#: The rule schema of fleet detection (``bpfloom collect --rules``): every event kind
#: of ``bpfloom detect`` plus ``host``, the agent's name.
FLEET_SCHEMA: Schema = {kind: {**fields, "host": str} for kind, fields in DEFAULT_SCHEMA.items()}

__all__ = ["FLEET_SCHEMA"]
