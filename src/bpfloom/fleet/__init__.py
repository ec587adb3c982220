"""The fleet: events and alerts of many hosts through NATS JetStream.

Agents publish with ``--sink nats://HOST:PORT`` (``bpfloom.sinks.nats.NatsSink``);
collectors consume with ``bpfloom collect`` or, in Python, ``bpfloom.collect(...)``, a
source the ``Pipeline`` reads like a ring buffer (``fleet.source``). The message format
is ``fleet.wire``; ``docs/fleet.md`` explains the design.
"""
