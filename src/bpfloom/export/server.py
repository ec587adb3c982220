"""The HTTP endpoint Prometheus scrapes: ``GET /metrics`` on exactly one address.

A small ``http.server`` server, one thread per connection: each scrape calls the
exporter, which reads the maps then (scrapes are serialised by the exporter). Only the
address given is bound; ``close()`` stops serving and joins the thread.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .exposition import CONTENT_TYPE

DEFAULT_LISTEN = "127.0.0.1:9435"  # ebpf_exporter's port (--web.listen-address)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9435`` for IPv6) → (host, port); raises ``ValueError``.

    The host is required: ``:9435`` would mean every address, which must be said
    (``0.0.0.0:9435`` or ``[::]:9435``).
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9435)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets ([::1]:9435)")
    if not host:
        raise ValueError(
            f"{text!r} names no host; say which address to listen on (127.0.0.1:9435, or "
            "0.0.0.0:9435 for every IPv4 address)"
        )
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return host, port


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = self.server.scrape()
                status, content_type = 200, CONTENT_TYPE
            except Exception as exc:  # a scrape must not kill the server
                body = f"scrape failed: {type(exc).__name__}: {exc}\n".encode()
                status, content_type = 500, "text/plain; charset=utf-8"
        elif path == "/":
            body = b'<html><body><a href="/metrics">metrics</a></body></html>\n'
            status, content_type = 200, "text/html; charset=utf-8"
        else:
            body, status, content_type = b"not found\n", 404, "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """No access log on stderr."""


class MetricsServer(ThreadingHTTPServer):
    """Serves ``scrape()``'s bytes at ``/metrics`` on (host, port); port 0 picks a free
    one (``port`` says which). Raises ``OSError`` when the address cannot be bound."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], scrape: Callable[[], bytes]) -> None:
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self.address_family = infos[0][0]
        self.scrape = scrape
        bind: tuple[str, int] = (str(infos[0][4][0]), int(infos[0][4][1]))
        super().__init__(bind, _Handler)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="bpfloom-export-http"
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, close the socket and join the thread (idempotent)."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
