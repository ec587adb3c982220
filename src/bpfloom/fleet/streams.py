"""The JetStream stream agents publish into and collectors read from."""

from __future__ import annotations

from typing import Any

from .._exceptions import BpfloomError
from . import wire
from .connection import describe

DEFAULT_STREAM = "BPFLOOM"
DEFAULT_MAX_AGE = 24 * 3600.0  # seconds
DEFAULT_MAX_BYTES = 1 << 30
DUPLICATE_WINDOW = 120.0  # seconds; JetStream's default, said explicitly


async def ensure_stream(js: Any, name: str, where: str, max_age: float, max_bytes: int) -> None:
    """Create stream ``name`` capturing ``bpfloom.>`` when it is missing: file storage,
    limited by age and bytes (the oldest messages go first), not by messages per
    subject, which is slow with many subjects. A stream that exists is left as its
    owner made it. Raises ``BpfloomError`` when it cannot be created."""
    from nats.js import api
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(name)
        return
    except NotFoundError:
        pass
    config = api.StreamConfig(
        name=name,
        subjects=[f"{wire.SUBJECT_ROOT}.>"],
        max_age=max_age,
        max_bytes=max_bytes,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW,
    )
    try:
        await js.add_stream(config)
    except Exception as exc:
        if "already in use" in str(exc):  # another agent made it just now
            return
        raise BpfloomError(f"{where}: cannot create stream {name} ({describe(exc)})") from None
