"""Defaults of the fleet's stream and of the agents' NATS sink, in a module of their
own: every command's ``--sink`` options show them (``cli/_nats.py``), and a command
that starts without ``--sink`` must not import asyncio or the NATS client for them."""

from __future__ import annotations

DEFAULT_STREAM = "BPFLOOM"
DEFAULT_MAX_AGE = 24 * 3600.0  # seconds
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_BATCH_RECORDS = 500
DEFAULT_FLUSH_INTERVAL = 0.1
DEFAULT_SPOOL_BYTES = 64 << 20
