"""A command's own metrics, and the aggregates it prints, served to Prometheus.

``--metrics-addr HOST:PORT`` on ``run``, every tool and ``detect`` adds this sink. At
each scrape it reports, labelled by ``tool`` and in the names operators know from
Tetragon and Hubble:

- ``bpfloom_events_received_total``, ``bpfloom_events_handled_total``,
  ``bpfloom_handler_errors_total``;
- ``bpfloom_events_lost_total{where="kernel|queue|sink"}``: what the kernel could not
  store, what the queue dropped, what the sinks could not deliver;
- ``bpfloom_handler_latency_seconds`` (a histogram, power-of-two buckets) and the
  queue's depth (``bpfloom_queue_depth``);
- ``bpfloom_alerts_total{rule,priority}`` for detect (from the alert records written);
- what a metric tool prints every interval, accumulated: each row holding a log2
  histogram (``slots``, ``unit``) feeds ``bpfloom_<tool>_<unit>`` (a histogram whose
  labels are the row's key fields; ``_sum`` counts each value at its bucket's lower
  bound, since the kernel keeps no exact sum), and the other numbers of a row feed
  counters ``bpfloom_<tool>_<field>_total``. Numbers that say which row it is (a pid,
  a port, an IP version: ``KEY_NUMBERS``) are labels like the row's strings, and
  numbers derived from others (an average, kilobytes beside bytes: ``DERIVED``) are
  left out: summing them means nothing.

The sink never fails the run: it only counts and serves (``fatal = False``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..export.exposition import go_float, header, label_block, number, series
from ..export.server import MetricsServer
from . import Record, Sink

_NOT_LABELS = frozenset(("interval", "time", "unit", "slots", "count"))
KEY_NUMBERS = frozenset(("pid", "tid", "ppid", "uid", "cpu", "ip", "lport", "rport"))
DERIVED = frozenset(("avg", "rx_kb", "tx_kb"))
_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(*parts: str) -> str:
    """A valid Prometheus metric name from ``parts`` (other characters become ``_``)."""
    return _NAME.sub("_", "_".join(p for p in parts if p))


class PrometheusSink(Sink):
    """Serves ``/metrics`` on ``address`` while the run lasts (``close()`` stops it).

    ``stats`` gives the pipeline's live counters (``PipelineStats.snapshot()``-like,
    plus ``sink_errors``); it is set with ``bind`` once the pipeline exists. Raises
    ``OSError`` at construction when the address cannot be bound.
    """

    name = "prometheus"
    fatal = False

    def __init__(
        self,
        address: tuple[str, int],
        tool: str,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(on_stop)
        self.tool = tool
        self._stats: Callable[[], dict[str, Any]] | None = None
        self._latency: Callable[[], list[int]] | None = None
        self._data_lock = threading.Lock()
        self._alerts: dict[tuple[str, str], int] = {}
        # histogram family -> label names, {label values: [slot counts]}
        self._hists: dict[str, tuple[tuple[str, ...], dict[tuple[str, ...], list[int]]]] = {}
        # counter family -> label names, {label values: total}
        self._counters: dict[str, tuple[tuple[str, ...], dict[tuple[str, ...], float]]] = {}
        self.server = MetricsServer(address, self.scrape).start()

    @property
    def url(self) -> str:
        return self.server.url

    def bind(
        self,
        stats: Callable[[], dict[str, Any]],
        latency_buckets: Callable[[], list[int]] | None = None,
    ) -> None:
        """Where the live counters come from (and the handler latency's log2 buckets)."""
        self._stats = stats
        self._latency = latency_buckets

    # --- records -------------------------------------------------------------------

    def _write(self, records: Sequence[Record]) -> None:
        alerts = [(r["rule"], r["priority"]) for r in records if "rule" in r and "priority" in r]
        if alerts:
            with self._data_lock:
                for key in alerts:
                    self._alerts[key] = self._alerts.get(key, 0) + 1

    def summary(self, text: str, records: Sequence[Record] = ()) -> None:
        """An interval's rows: histograms and numbers accumulate (see the module doc)."""
        with self._data_lock:
            for row in records:
                labels = tuple(
                    k
                    for k, v in row.items()
                    if k not in _NOT_LABELS and (isinstance(v, str) or k in KEY_NUMBERS)
                )
                values = tuple(str(row[k]) for k in labels)
                if "slots" in row and "unit" in row:
                    family = metric_name("bpfloom", self.tool, str(row["unit"]))
                    names, rows = self._hists.setdefault(family, (labels, {}))
                    if names != labels:
                        continue  # rows of another shape: not mixed into one family
                    slots = rows.setdefault(values, [])
                    for i, n in enumerate(row["slots"]):
                        if i == len(slots):
                            slots.append(0)
                        slots[i] += int(n)
                    continue
                for key, value in row.items():
                    if key in _NOT_LABELS or key in labels or key in DERIVED:
                        continue
                    if isinstance(value, (str, bool)):
                        continue
                    if not isinstance(value, (int, float)):
                        continue
                    family = metric_name("bpfloom", self.tool, key, "total")
                    names, totals = self._counters.setdefault(family, (labels, {}))
                    if names == labels:
                        totals[values] = totals.get(values, 0) + value

    def _close(self) -> None:
        self.server.close()

    # --- exposition ----------------------------------------------------------------

    def scrape(self) -> bytes:
        out: list[str] = []
        tool = ("tool",), (self.tool,)
        stats = self._stats() if self._stats is not None else {}
        for name, key, text in (
            ("bpfloom_events_received_total", "received", "Events read from the buffers."),
            ("bpfloom_events_handled_total", "handled", "Events handled (printed, written)."),
            ("bpfloom_handler_errors_total", "handler_errors", "Handler calls that raised."),
        ):
            out.append(header(name, "counter", text))
            out.append(f"{series(name, label_block(*tool))} {number(stats.get(key, 0))}\n")
        lost = "bpfloom_events_lost_total"
        out.append(header(lost, "counter", "Events lost, by where: kernel, queue or sink."))
        for where, key in (("kernel", "dropped_kernel"), ("queue", "dropped_queue")):
            block = label_block(("tool", "where"), (self.tool, where))
            out.append(f"{series(lost, block)} {number(stats.get(key, 0))}\n")
        sink_lost = stats.get("sink_errors", 0)
        block = label_block(("tool", "where"), (self.tool, "sink"))
        out.append(f"{series(lost, block)} {number(sink_lost)}\n")
        for name, key, text in (
            ("bpfloom_events_published_total", "published", "Records NATS acknowledged."),
            ("bpfloom_events_spooled_total", "spooled", "Records that waited for NATS."),
        ):
            if key in stats:
                out.append(header(name, "counter", text))
                out.append(f"{series(name, label_block(*tool))} {number(stats[key])}\n")
        depth = "bpfloom_queue_depth_max"
        out.append(header(depth, "gauge", "Most events waiting in the queue at once."))
        out.append(
            f"{series(depth, label_block(*tool))} {number(stats.get('queue_depth_max', 0))}\n"
        )
        if self._latency is not None:
            out.append(_latency_histogram(self.tool, self._latency()))
        with self._data_lock:
            if self._alerts:
                name = "bpfloom_alerts_total"
                out.append(header(name, "counter", "Alerts raised, by rule and priority."))
                for (rule, priority), n in sorted(self._alerts.items()):
                    block = label_block(("tool", "rule", "priority"), (self.tool, rule, priority))
                    out.append(f"{series(name, block)} {n}\n")
            for family, (names, rows) in sorted(self._hists.items()):
                out.append(_log2_histogram(family, self.tool, names, rows))
            for family, (names, totals) in sorted(self._counters.items()):
                out.append(header(family, "counter", f"{self.tool}: sum of the intervals' rows."))
                for values, total in sorted(totals.items()):
                    block = label_block(("tool", *names), (self.tool, *values))
                    out.append(f"{series(family, block)} {number(total)}\n")
        return "".join(out).encode()


def _log2_histogram(
    family: str,
    tool: str,
    names: tuple[str, ...],
    rows: dict[tuple[str, ...], list[int]],
) -> str:
    """A cumulative histogram from log2 slots: slot i holds [2**i, 2**(i+1)) (slot 0:
    0 and 1), so its upper bound ``le`` is 2**(i+1) - 1."""
    out = [header(family, "histogram", f"{tool}: log2 histogram of the intervals' rows.")]
    for values, slots in sorted(rows.items()):
        labels = ("tool", *names)
        label_values = (tool, *values)
        cumulative = 0
        total = 0
        for i, n in enumerate(slots):
            cumulative += n
            total += n * ((1 << i) if i else 0)  # each value at its bucket's lower bound
            block = label_block((*labels, "le"), (*label_values, go_float(float((2 << i) - 1))))
            out.append(f"{series(family + '_bucket', block)} {cumulative}\n")
        block = label_block((*labels, "le"), (*label_values, "+Inf"))
        out.append(f"{series(family + '_bucket', block)} {cumulative}\n")
        plain = label_block(labels, label_values)
        out.append(f"{series(family + '_sum', plain)} {total}\n")
        out.append(f"{series(family + '_count', plain)} {cumulative}\n")
    return "".join(out)


LATENCY_BUCKETS = range(10, 35)  # le = 2**i ns: 1.024 µs ... 17.2 s


def _latency_histogram(tool: str, buckets: list[int]) -> str:
    """Handler latency: ``buckets[i]`` counts calls of [2**(i-1), 2**i) ns; exposed with
    the fixed bounds 2**10 ns (1 µs) to 2**34 ns (17 s), faster calls in the first."""
    name = "bpfloom_handler_latency_seconds"
    out = [header(name, "histogram", "Time in the handler (writing to the sinks), per call.")]
    first = LATENCY_BUCKETS[0]
    cumulative = sum(buckets[: first + 1])
    for i in LATENCY_BUCKETS:
        if i > first:
            cumulative += buckets[i] if i < len(buckets) else 0
        block = label_block(("tool", "le"), (tool, go_float(float(1 << i) / 1e9)))
        out.append(f"{series(name + '_bucket', block)} {cumulative}\n")
    total = sum(buckets)
    inf = label_block(("tool", "le"), (tool, "+Inf"))
    out.append(f"{series(name + '_bucket', inf)} {total}\n")
    approx = sum(n * ((1 << i) >> 1) for i, n in enumerate(buckets)) / 1e9
    plain = label_block(("tool",), (tool,))
    out.append(f"{series(name + '_sum', plain)} {go_float(approx)}\n")
    out.append(f"{series(name + '_count', plain)} {total}\n")
    return "".join(out)
