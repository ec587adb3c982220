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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from .._exceptions import BpfloomError
from .._terminal import escape_control
from ..batch import Batch
from ..pipeline import Pipeline, StopSignals
from ..rules import Alert, RuleSet, load_rules
from .execsnoop import ExecSnoop
from .exitsnoop import ExitSnoop
from .opensnoop import OpenSnoop
from .tool import SECONDS, Printer, Tool, exit_output_blocked, fail, wait_for_stop

#: Which tool gives events of each kind, built with the options detection needs.
TOOLS: dict[str, Callable[[], Tool]] = {
    "exec": lambda: ExecSnoop(include_failed=True, resolve_paths=True),
    "open": lambda: OpenSnoop(full_path=True),
    "exit": lambda: ExitSnoop(),
}


class Detector:
    """Evaluates ``rules`` on live events; calls ``on_alert(alert)`` for every alert.

    Opens and loads the tools the rules need at construction (``BpfloomError`` on
    failure, with everything already opened released); ``start()`` attaches them and
    starts the pipeline; ``stop()`` detaches, drains, and returns the pipeline's stats.
    ``on_alert`` is called from the pipeline's worker threads, serialised by a lock.
    ``executor``, ``workers``, ``queue_size`` and ``policy`` are the pipeline's (the
    process executor is refused: rule state is shared in memory).
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
        self._tool_of: dict[str, Tool] = {}
        self._alert_lock = threading.Lock()
        try:
            for kind in self.kinds:
                tool = self.tools[kind] = TOOLS[kind]()
                for reader in tool.readers:
                    self._tool_of[reader.decoder.type.name] = tool
            readers = [r for t in self.tools.values() for r in t.readers]
            self.pipeline = Pipeline(
                readers,
                self._handle,
                executor=executor,
                workers=workers,
                queue_size=queue_size,
                policy=policy,
                batch=True,
            )
        except BaseException:
            self.close()
            raise

    def _handle(self, batch: Batch) -> None:
        tool = self._tool_of[batch.decoder.type.name]
        for record in tool.records(batch):
            for alert in self.rules.evaluate(record):
                with self._alert_lock:
                    self.alerts[alert.rule] = self.alerts.get(alert.rule, 0) + 1
                    self.on_alert(alert)

    def start(self) -> Detector:
        # Read before attaching, so that drops of the first events count too.
        self.pipeline.start()
        for tool in self.tools.values():
            tool.attach()
        return self

    def stop(self) -> dict[str, Any]:
        return self.pipeline.stop()

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


def format_alert(alert: Alert) -> str:
    """One text line: time, priority, rule, and the rule's rendered output, escaped: the
    output quotes paths, arguments and names a traced process chose, and a newline in
    one must not forge a second alert."""
    stamp = time.strftime("%H:%M:%S", time.localtime(alert.time))
    return escape_control(f"{stamp} {alert.priority:<8} {alert.rule}: {alert.output}")


def rule_errors_line(rules: RuleSet) -> str | None:
    """The exit line naming the rules whose evaluation raised, and how often (or None)."""
    errors = rules.errors
    if not errors:
        return None
    failed = ", ".join(f"{n} {name!r}" for name, n in sorted(errors.items()))
    return f"bpfloom detect: rules that failed and were skipped on some events: {failed}"


@click.command("detect")
@click.option(
    "-r",
    "--rules",
    "rule_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="YAML rule file; repeat to load several, in order (default: the built-in rules).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per alert.")
@click.option(
    "--duration",
    type=SECONDS,
    default=None,
    metavar="SECONDS",
    help="Stop after this many seconds (default: run until Ctrl-C).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Pipeline worker threads that evaluate the rules.",
)
@click.option("--list", "list_rules", is_flag=True, help="List the loaded rules and exit.")
def cli(
    rule_files: Sequence[Path],
    as_json: bool,
    duration: float | None,
    workers: int,
    list_rules: bool,
) -> None:
    """Detect suspicious behaviour in real time with Falco-style rules.

    Events of exec, open and exit tracing feed one pipeline; every rule is evaluated
    on the events it applies to. Alerts go to stdout, as text (TIME PRIORITY RULE:
    OUTPUT) or, with --json, one object per line with rule, priority, time, output,
    tags and the event's fields. Without --rules the built-in rule set is used: a shell
    started by a non-shell, reads of /etc/shadow, programs run from /tmp or /dev/shm,
    bursts of failed opens.
    """
    try:
        rules = load_rules(list(rule_files) or None)
    except BpfloomError as exc:
        fail(str(exc))
        return
    if list_rules:
        for rule in rules.rules:
            kinds = ",".join(sorted(rule.applies_to))
            click.echo(escape_control(f"{rule.priority:<13} {rule.name}  [{kinds}]"))
        return
    _run_detector(rules, as_json, duration, workers)


def _run_detector(rules: RuleSet, as_json: bool, duration: float | None, workers: int) -> None:
    with StopSignals() as signals:
        printer = Printer((), as_json, on_stop=signals.stop.set)

        def print_alert(alert: Alert) -> None:
            if as_json:
                printer.print([alert.to_json()])
            else:
                printer.text(format_alert(alert))

        try:
            detector = Detector(rules, print_alert, workers=workers)
        except BpfloomError as exc:
            fail(str(exc))
            return
        try:
            detector.start()
            kinds = ", ".join(detector.kinds)
            click.echo(
                f"bpfloom detect: tracing ({kinds}) with {len(rules.rules)} rules; Ctrl-C to stop",
                err=True,
            )
            wait_for_stop(signals.stop, detector.pipeline, duration)
            stats = detector.stop()
            if detector.pipeline.abandoned:  # a worker is stuck printing an alert
                exit_output_blocked()
        except BpfloomError as exc:
            fail(str(exc))
            return
        finally:
            detector.close()
    fired = ", ".join(f"{n} {name!r}" for name, n in sorted(detector.alerts.items())) or "none"
    suppressed = sum(rules.suppressed.values())
    click.echo(
        escape_control(
            f"bpfloom detect: {stats['received']} events; lost {stats['dropped_kernel']} in "
            f"the kernel, {stats['dropped_queue']} in user space; alerts: {fired}"
            + (f"; {suppressed} suppressed by rate limits" if suppressed else "")
            + (f"; {printer.out.unwritten} not written" if printer.out.unwritten else "")
        ),
        err=True,
    )
    errors_line = rule_errors_line(rules)
    if errors_line is not None:
        click.echo(escape_control(errors_line), err=True)
    if printer.out.error is not None:
        fail(printer.out.error_message().replace("records", "alerts"))
