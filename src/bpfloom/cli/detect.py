"""``bpfloom detect``: Falco-style rules over live exec, open and exit events."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .._exceptions import BpfloomError
from .._terminal import escape_control
from ..batch import Batch
from ..rules import RuleSet, load_rules
from ..sinks import Record
from ..sinks.table import Column
from ..tools.detect import Detector, format_alert, rule_errors_line
from ._app import main
from ._common import Output, fail, output_options
from ._session import Session, run_session


class DetectSession(Session):
    """The detector as a run-loop session: the tools' readers in, alerts out.

    The rules run in the pipeline's worker threads (``workers``), so a slow output
    never stalls the readers. Text output is one line per alert (``format_alert``),
    JSON one object per alert (``Alert.to_json``). Events the kernel left out because
    no rule could match them are counted apart: ``filtered_kernel`` in ``--stats``
    (not part of ``produced = handled + dropped_kernel + dropped_queue``, which counts
    what the programs emitted), "left out in the kernel" in the exit line.
    """

    name = "detect"
    record_kind = "alerts"
    header = False
    executor = "thread"

    def __init__(self, rules: RuleSet, workers: int) -> None:
        self.rules = rules
        self.workers = workers
        self.detector = Detector(rules, lambda alert: None, workers=workers)
        self.readers = self.detector.readers
        self.columns = [Column("ALERT", 0, text=format_alert)]

    def records(self, batch: Batch) -> list[Record]:
        return [alert.to_json() for alert in self.detector.alerts_of(batch)]

    def attach(self) -> None:
        self.detector.attach()

    def detach(self) -> None:
        self.detector.detach()

    def tracing_line(self) -> str:
        kinds = ", ".join(self.detector.kinds)
        return (
            f"bpfloom detect: tracing ({kinds}) with {len(self.rules.rules)} rules; Ctrl-C to stop"
        )

    def exit_line(self, stats: dict[str, Any]) -> str:
        alerts = self.detector.alerts
        fired = ", ".join(f"{n} {name!r}" for name, n in sorted(alerts.items())) or "none"
        suppressed = sum(self.rules.suppressed.values())
        filtered = self.detector.filtered_kernel()
        line = escape_control(
            f"bpfloom detect: {stats['received']} events, {filtered} left out in the kernel "
            f"(no rule could match them); lost {stats['dropped_kernel']} in "
            f"the kernel, {stats['dropped_queue']} in user space; alerts: {fired}"
            + (f"; {suppressed} suppressed by rate limits" if suppressed else "")
        )
        errors_line = rule_errors_line(self.rules)
        if errors_line is not None:
            line += "\n" + escape_control(errors_line)
        return line

    def dropped_kernel(self) -> int:
        return sum(t.dropped_kernel() for t in self.detector.tools.values())

    def extra_stats(self) -> dict[str, Any]:
        """``filtered_kernel``: events the prefilters left out (no rule could match
        them); apart from ``produced``, which counts what the programs emitted."""
        return {"filtered_kernel": self.detector.filtered_kernel()}

    def close(self) -> None:
        self.detector.close()


@main.command("detect")
@click.option(
    "-r",
    "--rules",
    "rule_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="YAML rule file; repeat to load several, in order (default: the built-in rules).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Pipeline worker threads that evaluate the rules.",
)
@click.option("--list", "list_rules", is_flag=True, help="List the loaded rules and exit.")
@output_options("alert")
def detect_command(
    rule_files: Sequence[Path],
    workers: int,
    list_rules: bool,
    out: Output,
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
    if list_rules:
        for rule in rules.rules:
            kinds = ",".join(sorted(rule.applies_to))
            click.echo(escape_control(f"{rule.priority:<13} {rule.name}  [{kinds}]"))
        return
    run_session(
        lambda: DetectSession(rules, workers),
        out=out,
    )
