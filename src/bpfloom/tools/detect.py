"""detect: real-time detection rules over the events of several tools at once.

The rules (``bpfloom.rules``: YAML in the spirit of Falco, parsed once into compiled
expression trees) name the event kinds they need through their fields; only the tools
those kinds come from are loaded: ``exec`` (execsnoop, failed execs included), ``open``
(opensnoop) and ``exit`` (exitsnoop). Every tool's ring buffer feeds ONE pipeline, and
the rules run in the pipeline's workers (threads by default, so a slow alert sink
never stalls the readers); each alert goes to ``on_alert`` — stdout in the CLI, any
sink in a program.

Library use::

    rules = bpfloom.rules.load_rules(["my.yaml"])
    with Detector(rules, on_alert=print) as det:
        det.run(duration=60)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from .._terminal import escape_control
from ..batch import Batch
from ..pipeline import Pipeline, StopSignals, wait_for_stop
from ..rules import Alert, RuleSet
from ..rules._prefilter import KernelFilter
from .detect_columns import TABLES, EventTable, ExecTable
from .execsnoop import ExecSnoop
from .exitsnoop import ExitSnoop
from .opensnoop import OpenSnoop
from .tool import Tool

#: Which tool gives events of each kind, built with the options detection needs and
#: the kernel-side prefilter of the rules (None: every event).
TOOLS: dict[str, Callable[[KernelFilter | None], Tool]] = {
    "exec": lambda f: ExecSnoop(include_failed=True, resolve_paths=True, prefilter=f),
    "open": lambda f: OpenSnoop(full_path=True, prefilter=f),
    "exit": lambda f: ExitSnoop(prefilter=f),
}


#: The rules cost a fixed amount per batch and little per event (``_columnar``): under
#: load a worker joins the batches queued behind its own, up to this many events.
MERGE_EVENTS = 2048
#: Under a flood a reader woken for every dozen records spends as much as the rules;
#: a reader that just read a busy batch waits this long before reading again
#: (``Pipeline(coalesce=)``), so batches come larger: up to 2 ms more latency, only
#: while busy (a lone event is read at once). bench/detect.py: live CPU per event
#: about a quarter of what it was without it.
COALESCE_S = 0.002
#: Below this many events of a kind a batch is cheaper record by record (the same
#: alerts: the equivalence tests of tests/test_detect_columnar.py). Default rules,
#: measured 2026-11-30: an open record costs ~3 µs, a batch of opens ~110 µs column-wise
#: (the same at about 32); an exec record ~15 µs to make (argv, cgroup path), so
#: columns win from about 8.
ROWWISE_BELOW = {"open": 32, "exec": 8, "exit": 32}


class Detector:
    """Evaluates ``rules`` on live events; calls ``on_alert(alert)`` for every alert.

    Opens and loads the tools the rules need at construction (``BpfloomError`` on
    failure, with everything already opened released); ``start()`` attaches them and
    starts the pipeline; ``stop()`` detaches, drains, and returns the pipeline's stats.
    ``on_alert`` is called from the pipeline's worker threads, serialised by a lock.
    ``executor``, ``workers``, ``queue_size`` and ``policy`` are the pipeline's (the
    process executor is refused: rule state is shared in memory). With ``prefilter``
    (the default) each tool's program leaves out the events no rule can match
    (``RuleSet.kernel_filter``); they are counted apart (``filtered_kernel``).
    """

    def __init__(
        self,
        rules: RuleSet,
        on_alert: Callable[[Alert], None],
        *,
        executor: str = "thread",
        workers: int = 2,
        queue_size: int = 65536,
        policy: str = "block",
        prefilter: bool = True,
    ) -> None:
        if executor == "process":
            # The handler holds the rule set's shared state (rate limits, thresholds)
            # and the tools; neither crosses to another process.
            raise ValueError("detect runs rules in threads, inline or async, not processes")
        self.rules = rules
        self.on_alert = on_alert
        self.alerts: dict[str, int] = {}
        self.kinds = sorted(rules.event_kinds)
        self.tools: dict[str, Tool] = {}
        self._table_of: dict[str, Callable[[Batch], EventTable]] = {}
        self._alert_lock = threading.Lock()
        try:
            for kind in self.kinds:
                kernel = rules.kernel_filter(kind) if prefilter else None
                tool = self.tools[kind] = TOOLS[kind](kernel)
                for reader in tool.readers:
                    self._table_of[reader.decoder.type.name] = _table_maker(kind, tool)
            self.pipeline = Pipeline(
                self.readers,
                self._handle,
                executor=executor,
                workers=workers,
                queue_size=queue_size,
                policy=policy,
                batch=True,
                merge_batches=MERGE_EVENTS,
                coalesce=COALESCE_S,
            )
        except BaseException:
            self.close()
            raise

    @property
    def readers(self) -> list[Any]:
        """The ring buffers of every tool the rules need."""
        return [r for t in self.tools.values() for r in t.readers]

    def alerts_of(self, batch: Batch) -> list[Alert]:
        """The alerts the rules raise on a batch's events (counted in ``alerts``);
        thread-safe. The rules run on the batch's columns (``RuleSet.evaluate_table``):
        only the rows that raise an alert become records; a small batch goes record
        by record (``ROWWISE_BELOW``)."""
        table = self._table_of[batch.decoder.type.name](batch)
        if table.n < ROWWISE_BELOW.get(table.kind, 32):
            found = [
                a for record in table.records(range(table.n)) for a in self.rules.evaluate(record)
            ]
        else:
            found = self.rules.evaluate_table(table)
        if found:
            with self._alert_lock:
                for alert in found:
                    self.alerts[alert.rule] = self.alerts.get(alert.rule, 0) + 1
        return found

    def _handle(self, batch: Batch) -> None:
        for alert in self.alerts_of(batch):
            with self._alert_lock:
                self.on_alert(alert)

    def attach(self) -> None:
        for tool in self.tools.values():
            tool.attach()

    def detach(self) -> None:
        for tool in self.tools.values():
            tool.detach()

    def start(self) -> Detector:
        # Read before attaching, so that drops of the first events count too.
        self.pipeline.start()
        self.attach()
        return self

    def filtered_kernel(self) -> int:
        """Events the prefilters left out in the kernel: no rule could match them. They
        were never emitted, so they are not in ``produced`` (nor drops)."""
        return sum(t.filtered_kernel() for t in self.tools.values())

    def stop(self) -> dict[str, Any]:
        """Detach, then drain what the programs emitted; the pipeline's final stats,
        with ``filtered_kernel``."""
        self.detach()
        stats = self.pipeline.stop()
        stats["filtered_kernel"] = self.filtered_kernel()
        return stats

    def run(self, duration: float | None = None) -> dict[str, Any]:
        """Start, run until ``duration`` or SIGINT/SIGTERM (main thread), and stop."""
        in_main = threading.current_thread() is threading.main_thread()
        with StopSignals() if in_main else contextlib.nullcontext() as signals:
            self.start()
            try:
                stop = signals.stop if signals is not None else threading.Event()
                wait_for_stop(stop, self.pipeline, duration)
            finally:
                stats = self.stop()
        return stats

    def close(self) -> None:
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            pipeline.stop()
        for tool in self.tools.values():
            tool.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _table_maker(kind: str, tool: Tool) -> Callable[[Batch], EventTable]:
    """How a batch of ``tool`` becomes a table of ``kind`` events (with its records)."""
    if isinstance(tool, ExecSnoop):
        cgroup_path = tool.cgroups.path
        return lambda batch: ExecTable(batch, tool.record, cgroup_path)
    table = TABLES[kind]
    return lambda batch: table(batch, tool.record)


def format_alert(alert: Alert | dict[str, Any]) -> str:
    """One text line: time, priority, rule, and the rule's rendered output, escaped: the
    output quotes paths, arguments and names a traced process chose, and a newline in
    one must not forge a second alert. Takes an ``Alert`` or its ``to_json()`` dict."""
    fields = alert.to_json() if isinstance(alert, Alert) else alert
    stamp = time.strftime("%H:%M:%S", time.localtime(fields["time"]))
    return escape_control(f"{stamp} {fields['priority']:<8} {fields['rule']}: {fields['output']}")


def rule_errors_line(rules: RuleSet) -> str | None:
    """The exit line naming the rules whose evaluation raised, and how often (or None)."""
    errors = rules.errors
    if not errors:
        return None
    failed = ", ".join(f"{n} {name!r}" for name, n in sorted(errors.items()))
    return f"bpfloom detect: rules that failed and were skipped on some events: {failed}"
