"""The rule engine: a compiled rule set that turns events into alerts.

Rules are indexed by event kind when the set is built, so ``evaluate`` does one dict
lookup and then runs only the matchers of the rules that apply to the event's kind.
Conditions are pure functions of the event and run without a lock; the state of
``threshold`` windows and ``rate_limit`` histories (and the suppressed counts) is
touched under one lock, only for rules that have such state and matched.

Rules are isolated from each other: a rule whose evaluation raises (an event holding
a value of an unexpected type, say) is counted in ``RuleSet.errors`` and logged at
most once per ``_ErrorLog.interval`` seconds, and the other rules still run on that
event; ``evaluate`` never raises because of one rule.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _columnar
from ._columnar import nonzero
from ._expr import Compiler, Event
from ._loader import (
    CompiledRule,
    RateLimit,
    Rule,
    Schema,
    Threshold,
    load_sources,
    read_rule_file,
)
from ._prefilter import KernelFilter, kernel_filter

log = logging.getLogger("bpfloom.rules")

DEFAULT_SCHEMA: Schema = {
    "exec": {
        "event": str,
        "time": float,
        "pid": int,
        "ppid": int,
        "uid": int,
        "comm": str,
        "parent_comm": str,
        "path": str,
        "norm_path": str,
        "args": list,
        "ret": int,
        "cgroup": str,
    },
    "open": {
        "event": str,
        "time": float,
        "pid": int,
        "tid": int,
        "uid": int,
        "comm": str,
        "fd": int,
        "err": int,
        "flags": int,
        "path": str,
        "norm_path": str,
    },
    "exit": {
        "event": str,
        "time": float,
        "pid": int,
        "ppid": int,
        "tid": int,
        "comm": str,
        "age": float,
        "exit_code": int,
        "signal": int,
    },
}
"""The events of ``bpfloom detect``: kind -> field -> type (``list`` is a list of str).

``path`` is the path as the program passed it; ``norm_path`` the one spelling of the
file it named, resolved by the kernel where the call succeeded (see
``bpfloom.tools.paths`` for what is and is not normalized)."""

DEFAULT_RULES = Path(__file__).with_name("default.yaml")


@dataclass(frozen=True)
class Alert:
    """One firing of a rule: ``time`` is the event's ``time`` field, or the clock's
    reading when the event has none; ``fields`` is a copy of the event."""

    rule: str
    priority: str
    time: float
    output: str
    tags: tuple[str, ...]
    fields: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The alert as a JSON-ready dict: rule, priority, time, output, tags, fields."""
        return {
            "rule": self.rule,
            "priority": self.priority,
            "time": self.time,
            "output": self.output,
            "tags": list(self.tags),
            "fields": dict(self.fields),
        }


class _ThresholdState:
    """Recent match times per ``by`` key; fires on the count-th match within the window.

    Each key keeps only its last ``count`` times (a list, oldest first), so the oldest
    kept time tells whether ``count`` matches fit in ``within`` seconds. After firing,
    the key's window restarts. Keys whose newest match is older than the window are
    dropped, at most once per window, so keys (pids) do not accumulate forever.
    """

    def __init__(self, threshold: Threshold) -> None:
        self.count = threshold.count
        self.within = threshold.within
        self.by = threshold.by
        self.windows: dict[object, list[float]] = {}
        self.last_sweep = float("-inf")

    def reached(self, event: Event, now: float) -> bool:
        return self.reached_key(event.get(self.by) if self.by is not None else None, now)

    def reached_key(self, key: object, now: float) -> bool:
        """``reached`` for a match whose ``by`` field holds ``key``."""
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = []
        window.append(now)
        if len(window) > self.count:
            del window[0]
        self.sweep(now)
        if len(window) < self.count or now - window[0] > self.within:
            return False
        del self.windows[key]
        return True

    def reached_rows(
        self, keys: Sequence[object] | npt.NDArray[Any] | None, times: npt.NDArray[np.float64]
    ) -> list[int] | None:
        """``reached_key`` on each match in turn (``keys``: their ``by`` values, a
        numpy array or None for no ``by``): the positions that reach the threshold,
        with the same state after; None, having changed nothing, if a key is
        unhashable (the caller then goes row by row and counts each failure).

        Between sweeps keys do not interact, so each key's matches in such a stretch
        are taken at once (``_stretch``); a match that sweeps is taken on its own, by
        ``reached_key``."""
        n = len(times)
        listed: Sequence[object] | None = None
        if isinstance(keys, np.ndarray):
            listed = keys.tolist()
        elif keys is not None:
            listed = keys
            try:
                set(listed)
            except TypeError:
                return None
        if n and float(np.maximum.reduce(times)) - self.last_sweep < self.within:
            return sorted(self._stretch(keys, listed, times, 0, n))  # no match sweeps
        reached: list[int] = []
        start = 0
        while start < n:
            # The next match that sweeps (the sweep compares as ``sweep`` does).
            due = nonzero(~(times[start:] - self.last_sweep < self.within))
            stop = start + int(due[0]) if due.size else n
            if stop > start:
                reached.extend(self._stretch(keys, listed, times, start, stop))
            if stop < n:
                key = listed[stop] if listed is not None else None
                if self.reached_key(key, float(times[stop])):
                    reached.append(stop)
            start = stop + 1
        reached.sort()
        return reached

    def _stretch(
        self,
        keys: Sequence[object] | npt.NDArray[Any] | None,
        listed: Sequence[object] | None,
        times: npt.NDArray[np.float64],
        start: int,
        stop: int,
    ) -> list[int]:
        """``reached_key`` on the matches ``start:stop``, none of which sweeps: each
        key's times appended at once where they cannot reach the threshold (the
        common case of many keys), counted by ``_count`` where they may."""
        part = times[start:stop]
        if isinstance(keys, np.ndarray):
            # Group by a stable sort of the keys: in order within a key.
            order = np.argsort(keys[start:stop], kind="stable")
            ranked = keys[start:stop][order]
            cuts = nonzero(ranked[1:] != ranked[:-1]) + 1
            bounds = [0, *cuts.tolist(), stop - start]
            values: list[object] = ranked[bounds[:-1]].tolist()
            positions: list[int] = (order + start).tolist()
            stamps: list[float] = part[order].tolist()
        else:
            groups: dict[object, list[int]] = {}
            for pos in range(start, stop):
                groups.setdefault(listed[pos] if listed is not None else None, []).append(pos)
            values, positions, bounds = list(groups), [], [0]
            for mine in groups.values():
                positions.extend(mine)
                bounds.append(len(positions))
            stamps = times[positions].tolist()
        fired: list[int] = []
        windows, count = self.windows, self.count
        for key, a, b in zip(values, bounds, bounds[1:], strict=False):
            window = windows.get(key)
            if window is None:
                if b - a < count:
                    windows[key] = stamps[a:b]
                    continue
            elif len(window) + b - a < count:
                window.extend(stamps[a:b])
                continue
            fired.extend(self._count(key, positions[a:b], times))
        return fired

    def _count(
        self,
        key: object,
        positions: list[int],
        times: npt.NDArray[np.float64],
    ) -> list[int]:
        """``reached_key(key, ...)`` on the matches at ``positions``, none of which
        sweeps and which may reach the threshold: the positions that do."""
        count, within = self.count, self.within
        old = self.windows.get(key, [])
        held = len(old)
        series = np.concatenate([np.array(old, dtype=np.float64), times[positions]])
        fired: list[int] = []
        begin = 0
        if len(series) >= count:
            # fits[j]: the count times ending at j + count - 1 fit in the window.
            fits = ~(series[count - 1 :] - series[: len(series) - count + 1] > within)
            ends = nonzero(fits) + (count - 1)
            at = int(np.searchsorted(ends, max(held, count - 1)))
            while at < len(ends):
                end = int(ends[at])
                fired.append(positions[end - held])
                begin = end + 1
                at = int(np.searchsorted(ends, begin + count - 1))
        left = series[begin:][-count:]
        if left.size:
            self.windows[key] = left.tolist()
        else:
            self.windows.pop(key, None)
        return fired

    def sweep(self, now: float) -> None:
        if now - self.last_sweep < self.within:
            return
        self.last_sweep = now
        stale = [key for key, w in self.windows.items() if now - w[-1] > self.within]
        for key in stale:
            del self.windows[key]


class _RateLimitState:
    """Times of the last ``count`` alerts: a new one passes if fewer than ``count``
    fall within the last ``period`` seconds (a sliding window, so never more than
    ``count`` alerts in any ``period``)."""

    def __init__(self, limit: RateLimit) -> None:
        self.count = limit.count
        self.period = limit.period
        self.sent: deque[float] = deque(maxlen=limit.count)
        self.suppressed = 0

    def admit(self, now: float) -> bool:
        if len(self.sent) == self.count and now - self.sent[0] < self.period:
            self.suppressed += 1
            return False
        self.sent.append(now)
        return True

    def admit_all(self, times: npt.NDArray[np.float64]) -> list[int]:
        """``admit`` on each of ``times`` in turn: the positions admitted. While the
        window is full, a run of suppressed times is skipped in one numpy test."""
        admitted: list[int] = []
        sent, count, period = self.sent, self.count, self.period
        i, n = 0, len(times)
        while i < n:
            if len(sent) == count:
                due = nonzero(~(times[i:] - sent[0] < period))
                j = i + int(due[0]) if due.size else n
                self.suppressed += j - i
                if j == n:
                    break
                i = j
            sent.append(float(times[i]))
            admitted.append(i)
            i += 1
        return admitted


class _Entry:
    """A compiled rule with its mutable state; the state is guarded by the set's lock."""

    __slots__ = (
        "compiled",
        "errors",
        "limit",
        "match",
        "render",
        "rule",
        "stateful",
        "threshold",
    )

    def __init__(self, compiled: CompiledRule) -> None:
        self.compiled = compiled
        self.rule = compiled.rule
        self.match = compiled.match
        self.render = compiled.render
        rule = compiled.rule
        self.threshold = _ThresholdState(rule.threshold) if rule.threshold else None
        self.limit = _RateLimitState(rule.rate_limit) if rule.rate_limit else None
        self.stateful = self.threshold is not None or self.limit is not None
        self.errors = 0  # evaluations that raised

    def admit(self, event: Event, now: float) -> bool:
        """Whether a match becomes an alert (threshold reached, rate limit not hit)."""
        if self.threshold is not None and not self.threshold.reached(event, now):
            return False
        return self.limit is None or self.limit.admit(now)

    def admit_rows(
        self, keys: Sequence[object] | npt.NDArray[Any] | None, times: npt.NDArray[np.float64]
    ) -> tuple[list[int], list[tuple[int, Exception]]]:
        """``admit`` for matches in order (``keys``: their ``by`` values): the positions
        admitted, and those whose admission raised (an unhashable key), with why."""
        admitted: list[int] = []
        failed: list[tuple[int, Exception]] = []
        threshold, limit = self.threshold, self.limit
        reached = threshold.reached_rows(keys, times) if threshold is not None else None
        if threshold is None or reached is not None:
            if limit is None:
                return (reached if reached is not None else list(range(len(times)))), failed
            if reached is None:
                return limit.admit_all(times), failed
            return [reached[p] for p in limit.admit_all(times[reached])], failed
        for pos, now in enumerate(times.tolist()):
            try:
                if threshold is not None and not threshold.reached_key(
                    keys[pos] if keys is not None else None, now
                ):
                    continue
                if limit is None or limit.admit(now):
                    admitted.append(pos)
            except Exception as exc:
                failed.append((pos, exc))
        return admitted, failed


class _ErrorLog:
    """Rate-limits the log of rule failures: at most one line per ``interval`` seconds,
    which says how many failures went unlogged since the previous one."""

    interval = 5.0

    def __init__(self) -> None:
        self._last = float("-inf")
        self._unlogged = 0

    def admit(self) -> int | None:
        """None if this failure is not to be logged, else how many went unlogged
        before it; call under the set's lock (and log after releasing it)."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self._unlogged += 1
            return None
        unlogged, self._last, self._unlogged = self._unlogged, now, 0
        return unlogged


class RuleSet:
    """Compiled rules that turn events into alerts; ``evaluate`` is thread-safe.

    Build one with ``load_rules`` or ``RuleSet.from_text``. ``clock`` gives the time
    (unix seconds) for events without a ``time`` field; thresholds and rate limits
    count in event time, so a replayed or batched stream is judged by when things
    happened, and tests can pass a fake clock instead of sleeping.
    """

    def __init__(
        self, compiled: Sequence[CompiledRule], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._entries = [_Entry(c) for c in compiled]
        self._clock = clock
        self._lock = threading.Lock()
        self._error_log = _ErrorLog()
        by_kind: dict[str, list[_Entry]] = {}
        for entry in self._entries:
            if entry.rule.enabled:
                for kind in sorted(entry.rule.applies_to):
                    by_kind.setdefault(kind, []).append(entry)
        self._by_kind = {kind: tuple(entries) for kind, entries in by_kind.items()}
        self._plans: dict[tuple[int, str], _columnar.Plan] = {}

    @classmethod
    def from_text(
        cls,
        text: str,
        name: str = "<string>",
        *,
        schema: Schema = DEFAULT_SCHEMA,
        clock: Callable[[], float] = time.time,
    ) -> RuleSet:
        """Rules from YAML text; ``name`` stands for the file in error messages.

        Raises ``RuleError``.
        """
        return cls(load_sources([(name, text)], schema), clock=clock)

    @property
    def rules(self) -> list[Rule]:
        """Every rule loaded, disabled ones included, in file order."""
        return [entry.rule for entry in self._entries]

    @property
    def event_kinds(self) -> frozenset[str]:
        """The event kinds at least one enabled rule applies to (what to trace)."""
        return frozenset(self._by_kind)

    def kernel_filter(self, kind: str) -> KernelFilter:
        """What a BPF program may leave out of the events of ``kind``: those no
        enabled rule can match (``bpfloom.rules._prefilter``)."""
        return kernel_filter([entry.compiled for entry in self._entries], kind)

    @property
    def suppressed(self) -> dict[str, int]:
        """Per rule with a ``rate_limit``: how many alerts the limit has cut so far."""
        with self._lock:
            return {e.rule.name: e.limit.suppressed for e in self._entries if e.limit is not None}

    @property
    def errors(self) -> dict[str, int]:
        """Per rule whose evaluation raised: how many times (see ``evaluate``)."""
        with self._lock:
            return {e.rule.name: e.errors for e in self._entries if e.errors}

    def evaluate(self, event: Event) -> list[Alert]:
        """The alerts ``event`` raises, in rule order (thread-safe; never blocks long).

        Only the rules that apply to the event's kind (its ``event`` field) run. A
        rule that raises on the event (matching or rendering its output) is skipped,
        counted in ``errors`` and logged (rate-limited); the others still run.
        """
        try:
            entries = self._by_kind.get(event.get("event", ""))
        except TypeError:  # an unhashable kind names no rule
            entries = None
        alerts: list[Alert] = []
        if not entries:
            return alerts
        now: float | None = None
        for entry in entries:
            try:
                if not entry.match(event):
                    continue
                if now is None:
                    now = self._event_time(event)
                if entry.stateful:
                    with self._lock:
                        if not entry.admit(event, now):
                            continue
                rule = entry.rule
                output = entry.render(event)
            except Exception as exc:
                self._failed(entry, exc)
                continue
            alerts.append(Alert(rule.name, rule.priority, now, output, rule.tags, dict(event)))
        return alerts

    def evaluate_table(self, table: _columnar.Table) -> list[Alert]:
        """The alerts of a batch of events given as columns (``_columnar.Table``): the
        same alerts, in the same order, as ``evaluate`` on each record in turn.

        Conditions run on the columns (``bpfloom.rules._columnar``); a rule they cannot
        answer is matched row-wise on the batch's records. Thresholds and rate limits
        then take each rule's matches in row order under the lock, and only the rows
        that raise an alert are turned into records. Thread-safe.
        """
        entries = self._by_kind.get(table.kind)
        if not entries or table.n == 0:
            return []
        matched: list[tuple[_Entry, list[int]]] = []
        everything: list[dict[str, Any]] | None = None
        evaluators: dict[int, _columnar.Evaluator] = {}
        for entry in entries:
            rows: list[int] | None = None
            compiler = entry.compiled.compiler
            if entry.compiled.tree is not None and compiler is not None:
                evaluator = evaluators.get(id(compiler))
                if evaluator is None:
                    plan = self._plan(compiler, table.strings)
                    evaluator = evaluators[id(compiler)] = _columnar.Evaluator(table, plan)
                try:
                    rows = evaluator.matches(entry.compiled.tree).tolist()
                except _columnar.Unsupported:
                    rows = None
            if rows is None:
                if everything is None:
                    everything = table.records(range(table.n))
                rows = self._match_rows(entry, everything)
            if rows:
                matched.append((entry, rows))
        if not matched:
            return []
        times = table.times()
        admitted: list[tuple[_Entry, list[int]]] = []
        failures: list[tuple[_Entry, Exception]] = []
        for entry, rows in matched:
            if not entry.stateful:
                admitted.append((entry, rows))
                continue
            keys = None
            if entry.threshold is not None and entry.threshold.by is not None:
                by = entry.threshold.by
                keys = self._keys(table, evaluators, by, rows, everything)
            row_times = times[rows]
            with self._lock:
                passed, failed = entry.admit_rows(keys, row_times)
            failures.extend((entry, exc) for _, exc in failed)
            if passed:
                admitted.append((entry, [rows[p] for p in passed]))
        for entry, exc in failures:
            self._failed(entry, exc)
        if not admitted:
            return []
        wanted = sorted({row for _, rows in admitted for row in rows})
        if everything is not None:
            records = {row: everything[row] for row in wanted}
        else:
            records = dict(zip(wanted, table.records(wanted), strict=True))
        order = {id(entry): i for i, entry in enumerate(entries)}
        found: list[tuple[int, int, Alert]] = []
        for entry, rows in admitted:
            rule = entry.rule
            for row in rows:
                event = records[row]
                try:
                    output = entry.render(event)
                except Exception as exc:
                    self._failed(entry, exc)
                    continue
                now = float(times[row])
                alert = Alert(rule.name, rule.priority, now, output, rule.tags, dict(event))
                found.append((row, order[id(entry)], alert))
        found.sort(key=lambda item: (item[0], item[1]))
        return [alert for _, _, alert in found]

    def _plan(self, compiler: Compiler, strings: str) -> _columnar.Plan:
        key = (id(compiler), strings)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _columnar.Plan(compiler, strings)
        return plan

    def _match_rows(self, entry: _Entry, records: Sequence[Event]) -> list[int]:
        """The rows a rule matches, row-wise (rules the columns cannot evaluate)."""
        rows: list[int] = []
        for row, event in enumerate(records):
            try:
                if entry.match(event):
                    rows.append(row)
            except Exception as exc:
                self._failed(entry, exc)
        return rows

    @staticmethod
    def _keys(
        table: _columnar.Table,
        evaluators: dict[int, _columnar.Evaluator],
        field: str,
        rows: list[int],
        everything: list[dict[str, Any]] | None,
    ) -> list[object] | npt.NDArray[Any]:
        """The values of ``field`` (a threshold's ``by``) on ``rows``, as in the records."""
        if everything is not None:
            return [everything[row].get(field) for row in rows]
        column = next(iter(evaluators.values())).column(field) if evaluators else None
        if column is None:
            column = table.column(field)
        if column is None:
            return [None] * len(rows)
        at = np.asarray(rows, dtype=np.intp)
        if isinstance(column, _columnar.NumColumn) and column.array.dtype.kind in "iu":
            return column.array[at]
        return column.values(at)

    def _failed(self, entry: _Entry, exc: Exception) -> None:
        with self._lock:
            entry.errors += 1
            unlogged = self._error_log.admit()
        if unlogged is None:
            return
        try:
            detail = repr(str(exc))  # repr: the text may come from the event
        except Exception:  # an exception that cannot say what it is
            detail = "(no message)"
        log.warning(
            "rule %r (%s) failed on an event and was skipped: %s: %s%s",
            entry.rule.name,
            entry.rule.source,
            type(exc).__name__,
            detail,
            f" ({unlogged} more rule failures since the last report)" if unlogged else "",
        )

    def _event_time(self, event: Event) -> float:
        t = event.get("time")
        if isinstance(t, int | float) and not isinstance(t, bool):
            return float(t)
        return self._clock()


def load_rules(
    paths: Sequence[str | Path] | None = None,
    *,
    schema: Schema = DEFAULT_SCHEMA,
    clock: Callable[[], float] = time.time,
) -> RuleSet:
    """Rules from YAML files read in order as one set (None: the default rules).

    Raises ``RuleError`` naming the file and line of the first problem, including a
    file that cannot be read, is not a regular file, or passes the bounds of
    ``bpfloom.rules`` (its docstring lists them).
    """
    sources: list[tuple[str, str]] = []
    for path in [DEFAULT_RULES] if paths is None else paths:
        sources.append((str(path), read_rule_file(path)))
    return RuleSet(load_sources(sources, schema), clock=clock)
