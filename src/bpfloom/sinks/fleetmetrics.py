"""Fleet metrics: what ``bpfloom collect --metrics-addr`` serves, labelled by host.

Beside the collector's own counters (``PrometheusSink``: received, handled, lost,
handler latency), every scrape reports what came from the fleet:

- ``bpfloom_fleet_records_total{host,tool,kind}``: records received, by the agent
  that sent them, its tool and the kind (events, summary, alerts);
- ``bpfloom_fleet_delivery_seconds{host}``: a histogram of the time from an agent
  sealing a batch to the collector handling it (both hosts' wall clocks: it includes
  their offset, and time spent in an agent's spool);
- ``bpfloom_fleet_alerts_total{host,rule,priority}``: alerts, the agents' own
  (``detect``) and the collector's (``--rules``);
- the metric tools' interval rows (runqlat, biolatency, ... published by agents), each
  log2 histogram accumulated as ``bpfloom_fleet_<tool>_<unit>`` labelled by ``host``
  and the row's key, as ``PrometheusSink`` serves them on one host.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from ..export.exposition import go_float, header, label_block, series
from . import Record
from .prometheus import PrometheusSink, _log2_histogram, metric_name

_NOT_LABELS = frozenset(("interval", "time", "unit", "slots", "count", "tool"))
DELIVERY_BUCKETS = tuple(0.001 * 2**i for i in range(18))  # 1 ms ... 131 s


class FleetMetricsSink(PrometheusSink):
    """``PrometheusSink`` plus the fleet's series (see the module docstring)."""

    def __init__(self, address: tuple[str, int], tool: str) -> None:
        self._fleet_lock = threading.Lock()
        self._records: dict[tuple[str, str, str], int] = {}
        self._fleet_alerts: dict[tuple[str, str, str], int] = {}
        self._delivery: dict[str, list[int]] = {}
        self._delivery_sum: dict[str, float] = {}
        # family -> (tool, label names, {label values: slots})
        self._fleet_hists: dict[
            str, tuple[str, tuple[str, ...], dict[tuple[str, ...], list[int]]]
        ] = {}
        super().__init__(address, tool)

    def write_batch(self, batch: Any, records: Sequence[Record]) -> None:
        message = getattr(batch, "message", None)
        if message is None:
            self.write(records)
            return
        now = time.time()
        with self._fleet_lock:
            key = (message.host, message.tool, message.kind)
            self._records[key] = self._records.get(key, 0) + len(batch)
            if message.sent > 0:
                lag = max(now - message.sent, 0.0)
                # One slot per bound, and a last one for what is beyond them (+Inf).
                slots = self._delivery.setdefault(message.host, [0] * (len(DELIVERY_BUCKETS) + 1))
                i = next((i for i, b in enumerate(DELIVERY_BUCKETS) if lag <= b), -1)
                slots[i] += 1
                self._delivery_sum[message.host] = self._delivery_sum.get(message.host, 0.0) + lag
            if message.kind == "summary":
                self._add_rows(message.tool, records)
            for r in records:
                if "rule" in r and "priority" in r:
                    k = (str(r.get("host", message.host)), str(r["rule"]), str(r["priority"]))
                    self._fleet_alerts[k] = self._fleet_alerts.get(k, 0) + 1

    def _add_rows(self, tool: str, rows: Sequence[Record]) -> None:
        for row in rows:
            if "slots" not in row or "unit" not in row:
                continue
            labels = tuple(k for k, v in row.items() if k not in _NOT_LABELS and isinstance(v, str))
            values = tuple(str(row[k]) for k in labels)
            family = metric_name("bpfloom_fleet", tool, str(row["unit"]))
            _, names, hists = self._fleet_hists.setdefault(family, (tool, labels, {}))
            if names != labels:
                continue
            slots = hists.setdefault(values, [])
            for i, n in enumerate(row["slots"]):
                if i == len(slots):
                    slots.append(0)
                slots[i] += int(n)

    def scrape(self) -> bytes:
        out = [super().scrape().decode()]
        with self._fleet_lock:
            name = "bpfloom_fleet_records_total"
            out.append(header(name, "counter", "Records received from the fleet."))
            for (host, tool, kind), n in sorted(self._records.items()):
                block = label_block(("host", "tool", "kind"), (host, tool, kind))
                out.append(f"{series(name, block)} {n}\n")
            if self._fleet_alerts:
                name = "bpfloom_fleet_alerts_total"
                out.append(header(name, "counter", "Alerts of the fleet, by host and rule."))
                for (host, rule, priority), n in sorted(self._fleet_alerts.items()):
                    block = label_block(("host", "rule", "priority"), (host, rule, priority))
                    out.append(f"{series(name, block)} {n}\n")
            name = "bpfloom_fleet_delivery_seconds"
            out.append(header(name, "histogram", "Agent sealing a batch to its handling here."))
            for host, slots in sorted(self._delivery.items()):
                cumulative = 0
                for i, bound in enumerate(DELIVERY_BUCKETS):
                    cumulative += slots[i]
                    block = label_block(("host", "le"), (host, go_float(bound)))
                    out.append(f"{series(name + '_bucket', block)} {cumulative}\n")
                total = cumulative + slots[-1]
                block = label_block(("host", "le"), (host, "+Inf"))
                out.append(f"{series(name + '_bucket', block)} {total}\n")
                plain = label_block(("host",), (host,))
                lag = self._delivery_sum.get(host, 0.0)
                out.append(f"{series(name + '_sum', plain)} {go_float(lag)}\n")
                out.append(f"{series(name + '_count', plain)} {total}\n")
            for family, (tool, names, hists) in sorted(self._fleet_hists.items()):
                out.append(_log2_histogram(family, tool, names, hists))
        return "".join(out).encode()
