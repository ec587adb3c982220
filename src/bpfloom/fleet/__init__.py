"""The fleet: events and alerts of many hosts through NATS JetStream.

Agents publish with ``--sink nats://HOST:PORT`` (``bpfloom.sinks.nats.NatsSink``);
collectors consume with ``bpfloom collect`` or, in Python, ``bpfloom.collect(...)``, a
source the ``Pipeline`` reads like a ring buffer (``fleet.source``). The message format
is ``fleet.wire``; ``docs/fleet.md`` explains the design.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..rules._loader import Schema

    #: The rule schema of fleet detection (``bpfloom collect --rules``): every event
    #: kind of ``bpfloom detect`` plus ``host``, the agent's name.
    FLEET_SCHEMA: Schema


def __getattr__(name: str) -> Any:
    """``FLEET_SCHEMA``, made on first use: every command imports ``fleet.wire`` and
    ``fleet.defaults`` for its ``--sink`` options, and must not import the rule engine
    for them."""
    if name == "FLEET_SCHEMA":
        from ..rules import DEFAULT_SCHEMA

        schema = {kind: {**fields, "host": str} for kind, fields in DEFAULT_SCHEMA.items()}
        globals()[name] = schema
        return schema
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FLEET_SCHEMA"]
