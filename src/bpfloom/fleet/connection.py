"""Reaching NATS: server URLs, credentials and TLS, and the event loop nats-py runs on.

nats-py is an asyncio library; bpfloom's readers and sinks are threads. Each side of
the fleet (``NatsSink`` on an agent, ``FleetSource`` in a collector) runs one event loop
in a daemon thread of its own (``LoopThread``) and talks to it with
``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import threading
import urllib.parse
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from .._exceptions import BpfloomError

T = TypeVar("T")
DEFAULT_PORT = 4222
SCHEMES = ("nats", "tls")


def parse_server(url: str) -> str:
    """A server URL checked and normalized: ``nats://HOST[:PORT]`` or ``tls://...``,
    optionally with ``user:password@`` or ``token@``; nothing else (no path, query or
    fragment). Raises ``ValueError`` with the reason."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a server URL ({exc})") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{url!r}: a NATS server is nats://HOST:PORT (or tls://HOST:PORT)")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host; a NATS server is nats://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a NATS server URL has no path, query or fragment")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port or DEFAULT_PORT}"
    if parts.username is not None:
        user = parts.username if parts.password is None else f"{parts.username}:{parts.password}"
        netloc = f"{user}@{netloc}"
    return f"{parts.scheme}://{netloc}"


def redact(url: str) -> str:
    """A server URL fit for a message: any user, password or token left out."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@dataclass(frozen=True)
class NatsOptions:
    """How to reach a NATS server or cluster.

    ``servers``: URLs (``parse_server``), tried in order; ``creds``: a credentials
    file (a user JWT and its NKey seed, as ``nsc`` writes them); ``token``: an
    authorization token; ``tls_ca``/``tls_cert``/``tls_key``: TLS with this CA, and a
    client certificate (TLS is also used for ``tls://`` URLs with the system's CAs).
    """

    servers: tuple[str, ...]
    creds: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float = 2.0
    name: str = "bpfloom"

    @property
    def where(self) -> str:
        """The servers for messages (no secrets)."""
        return ",".join(redact(s) for s in self.servers)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context, or None without TLS. Raises ``BpfloomError`` for unreadable
        certificate files."""
        wants = self.tls_ca or self.tls_cert or any(s.startswith("tls:") for s in self.servers)
        if not wants:
            return None
        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise BpfloomError(f"NATS TLS: {exc}") from exc
        return context

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (callbacks are added by the caller)."""
        kwargs: dict[str, Any] = {
            "servers": list(self.servers),
            "name": self.name,
            "connect_timeout": self.connect_timeout,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "dont_randomize": True,
        }
        if self.creds:
            kwargs["user_credentials"] = self.creds
        if self.token:
            kwargs["token"] = self.token
        context = self.ssl_context()
        if context is not None:
            kwargs["tls"] = context
        return kwargs


def is_auth_error(exc: BaseException) -> bool:
    """The server refused who we are (a wrong token, user or credentials file)."""
    text = str(exc).lower()
    return "authorization" in text or "authentication" in text or "permissions" in text


def refusal(exc: BaseException) -> str | None:
    """Why we and the server cannot work together, when trying again cannot help: it
    refused our credentials, or we refused its TLS certificate. None for other errors
    (an unreachable server is waited for)."""
    text = str(exc).lower()
    if type(exc).__name__ == "SSLCertVerificationError" or "certificate verify failed" in text:
        return (
            f"its TLS certificate was not accepted ({describe(exc)}); "
            "give the CA that signed it (--nats-tls-ca)"
        )
    if is_auth_error(exc):
        return f"the server refused our credentials ({describe(exc)})"
    return None


def describe(exc: BaseException) -> str:
    """One line for an error of nats-py (whose messages are sometimes empty)."""
    text = str(exc).strip() or type(exc).__name__
    if text.startswith("nats: "):
        text = text[6:]
    return " ".join(text.split())


def _not_the_tls_eof_notice(record: logging.LogRecord) -> bool:
    """asyncio logs 'returning true from eof_received() has no effect when using ssl'
    when nats-py's protocol, upgraded to TLS, asks to stay open at EOF: harmless, and
    it would reach the user's terminal as a stray line."""
    return "eof_received() has no effect when using ssl" not in record.getMessage()


class LoopThread:
    """An asyncio event loop running in a daemon thread of its own.

    ``run(coro, timeout)`` runs a coroutine there and waits for its result;
    ``submit(coro)`` does not wait; ``call(fn)`` runs a plain function there soon;
    ``spawn(coro)``, from the loop's thread, starts a task it keeps a reference to;
    ``stop()`` stops the loop and joins the thread (idempotent).
    """

    def __init__(self, name: str) -> None:
        logging.getLogger("asyncio").addFilter(_not_the_tls_eof_notice)  # added once
        self.loop = asyncio.new_event_loop()
        self._background: set[asyncio.Future[Any]] = set()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        # Whatever is still pending is cancelled, and let run to its end.
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        if tasks:
            gather = asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.wait_for(gather, 2.0))

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop; ``TimeoutError`` (and the coroutine cancelled) when
        it takes longer than ``timeout``."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError from None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start ``coro`` as a task of the loop, from the loop's own thread; the task is
        referenced until it ends (asyncio keeps only weak references)."""
        task = asyncio.ensure_future(coro, loop=self.loop)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def call(self, fn: Any, *args: Any) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(2.0)
        if not self._thread.is_alive():
            self.loop.close()
