"""The NATS options every tracing command takes (``--sink nats://...``), and the sink
they make.

They are output options (``_common.output_options``) that do not reach the commands'
functions: each stores its value in the click context (``ctx.meta``) and
``Outputs.for_command`` builds the sink from there, so adding them changed no
command's signature.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click

from ..fleet import wire
from ..fleet.connection import NatsOptions, parse_server
from ..fleet.streams import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, DEFAULT_STREAM
from ..sinks.nats import (
    DEFAULT_BATCH_RECORDS,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_SPOOL_BYTES,
    NatsSink,
)
from ._common import SECONDS, stderr

if TYPE_CHECKING:
    from ._session import Session

META = "bpfloom.nats"
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)i?b?", re.IGNORECASE)


class ServerURL(click.ParamType):  # type: ignore[type-arg]
    """A click type for a NATS server URL (``nats://HOST:PORT``, ``tls://...``)."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse_server(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Token(click.ParamType):  # type: ignore[type-arg]
    """A click type for one subject token (a host name, a stream, a durable name)."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return wire.check_token(str(value), "name")
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Size(click.ParamType):  # type: ignore[type-arg]
    """A click type for a size in bytes: ``65536``, ``64K``, ``64M``, ``1G``."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        m = _SIZE.fullmatch(str(value).strip())
        if m is None or int(m.group(1)) <= 0:
            self.fail(f"{value!r} is not a size (65536, 64K, 64M, 1G)", param, ctx)
        unit = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
        return int(m.group(1)) * unit[m.group(2).lower()]


SERVER_URL = ServerURL()
TOKEN = Token()
SIZE = Size()


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    assert param.name is not None
    ctx.meta.setdefault(META, {})[param.name] = value
    return value


def nats_option_specs() -> list[tuple[list[str], dict[str, Any]]]:
    """The ``--sink`` and ``--nats-*`` options (see the module docstring)."""
    specs: list[tuple[list[str], dict[str, Any]]] = [
        (
            ["--sink", "nats_sink"],
            {
                "multiple": True,
                "type": SERVER_URL,
                "metavar": "URL",
                "help": "Also publish the records to NATS JetStream at nats://HOST:PORT "
                "(tls://HOST:PORT for TLS); repeat for the servers of a cluster. Subjects "
                "bpfloom.<host>.<tool>, alerts on bpfloom.<host>.alerts.",
            },
        ),
        (
            ["--host-name", "nats_host"],
            {
                "type": TOKEN,
                "default": None,
                "metavar": "NAME",
                "help": "This host's name in subjects and message ids (default: the "
                "system's host name, dots and other characters a subject token cannot "
                "hold made '_').",
            },
        ),
        (
            ["--nats-creds", "nats_creds"],
            {
                "type": click.Path(exists=True, dir_okay=False),
                "default": None,
                "metavar": "FILE",
                "help": "NATS credentials file (user JWT and NKey seed).",
            },
        ),
        (
            ["--nats-token", "nats_token"],
            {
                "default": None,
                "envvar": "BPFLOOM_NATS_TOKEN",
                "metavar": "TOKEN",
                "help": "NATS authorization token (or BPFLOOM_NATS_TOKEN, which ps does not show).",
            },
        ),
        (
            ["--nats-tls-ca", "nats_tls_ca"],
            {
                "type": click.Path(exists=True, dir_okay=False),
                "default": None,
                "metavar": "FILE",
                "help": "Use TLS, trusting the CA certificates in FILE.",
            },
        ),
        (
            ["--nats-tls-cert", "nats_tls_cert"],
            {
                "type": click.Path(exists=True, dir_okay=False),
                "default": None,
                "metavar": "FILE",
                "help": "TLS client certificate (with --nats-tls-key).",
            },
        ),
        (
            ["--nats-tls-key", "nats_tls_key"],
            {
                "type": click.Path(exists=True, dir_okay=False),
                "default": None,
                "metavar": "FILE",
                "help": "TLS client key.",
            },
        ),
        (
            ["--nats-format", "nats_format"],
            {
                "type": click.Choice(["json", "arrow"]),
                "metavar": "FORMAT",
                "default": "json",
                "show_default": True,
                "help": "Message payload, json or arrow: JSON lines (the --json records) or "
                "an Arrow IPC stream of the raw records (needs pyarrow).",
            },
        ),
        (
            ["--nats-batch", "nats_batch"],
            {
                "type": click.IntRange(100, 1000),
                "default": DEFAULT_BATCH_RECORDS,
                "show_default": True,
                "metavar": "N",
                "help": "Records per message at most (100 to 1000).",
            },
        ),
        (
            ["--nats-flush", "nats_flush_interval"],
            {
                "type": SECONDS,
                "default": DEFAULT_FLUSH_INTERVAL,
                "show_default": True,
                "metavar": "SECONDS",
                "help": "Send a batch that is not full after this long.",
            },
        ),
        (
            ["--nats-spool-size", "nats_spool_size"],
            {
                "type": SIZE,
                "default": DEFAULT_SPOOL_BYTES,
                "metavar": "SIZE",
                "help": "Bytes of messages kept while the server is unreachable (64M by "
                "default); when full, the oldest are dropped and counted.",
            },
        ),
        (
            ["--nats-spool-dir", "nats_spool_dir"],
            {
                "type": click.Path(file_okay=False),
                "default": None,
                "metavar": "DIR",
                "help": "Spool to files in DIR instead of memory; what is left at exit is "
                "sent by the next run that uses DIR.",
            },
        ),
        (
            ["--nats-stream", "nats_stream"],
            {
                "type": TOKEN,
                "default": DEFAULT_STREAM,
                "show_default": True,
                "metavar": "NAME",
                "help": "JetStream stream, created on subjects bpfloom.> when missing.",
            },
        ),
        (
            ["--nats-max-age", "nats_max_age"],
            {
                "type": SECONDS,
                "default": DEFAULT_MAX_AGE,
                "show_default": True,
                "metavar": "SECONDS",
                "help": "A stream this creates keeps messages this long.",
            },
        ),
        (
            ["--nats-max-bytes", "nats_max_bytes"],
            {
                "type": SIZE,
                "default": DEFAULT_MAX_BYTES,
                "metavar": "SIZE",
                "help": "A stream this creates keeps at most this many bytes (1G by "
                "default), the oldest messages going first.",
            },
        ),
    ]
    for _, attrs in specs:
        attrs["expose_value"] = False
        attrs["callback"] = _store
    return specs


def options_from_context(where: str = "--sink") -> dict[str, Any] | None:
    """The NATS option values of the running command, or None without ``--sink``.
    Raises ``click.UsageError`` when ``--nats-*`` options come without a server."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    values: dict[str, Any] = dict(ctx.meta.get(META, {}))
    if values.get("nats_sink"):
        return values
    given = [
        name
        for name in values
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    ]
    if given:
        flag = "--" + given[0].replace("nats_host", "host_name").replace("_", "-")
        raise click.UsageError(f"{flag} needs {where} nats://HOST:PORT", ctx=ctx)
    return None


def connection_options(values: dict[str, Any], servers: tuple[str, ...]) -> NatsOptions:
    if values.get("nats_tls_key") and not values.get("nats_tls_cert"):
        raise click.UsageError("--nats-tls-key needs --nats-tls-cert")
    return NatsOptions(
        servers,
        creds=values.get("nats_creds"),
        token=values.get("nats_token"),
        tls_ca=values.get("nats_tls_ca"),
        tls_cert=values.get("nats_tls_cert"),
        tls_key=values.get("nats_tls_key"),
    )


def nats_sink(session: Session) -> NatsSink | None:
    """The session's NATS sink from ``--sink`` and friends, or None without one.
    Raises ``BpfloomError`` when the server refuses us (see ``NatsSink``)."""
    values = options_from_context()
    if values is None:
        return None
    tool = re.sub(r"[^A-Za-z0-9_-]", "_", session.fleet_name or session.name)[:64]
    return NatsSink(
        connection_options(values, tuple(values["nats_sink"])),
        host=values["nats_host"] or wire.default_host_name(),
        tool=tool,
        kind=session.record_kind,
        format=values["nats_format"],
        stream=values["nats_stream"],
        max_age=values["nats_max_age"],
        max_bytes=values["nats_max_bytes"],
        batch_records=values["nats_batch"],
        flush_interval=values["nats_flush_interval"],
        spool_bytes=values["nats_spool_size"],
        spool_dir=values["nats_spool_dir"],
        warn=lambda text: stderr(f"bpfloom {session.name}: {text}"),
    )
