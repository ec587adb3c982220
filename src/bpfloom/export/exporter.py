"""The exporter: each config's object opened, checked, loaded and attached; metrics
written at every scrape.

Life cycle, as for any ``BpfObject``::

    with Exporter(load_configs(["biolatency.yaml"])) as exporter:  # open + check
        exporter.load()                                             # verifier
        exporter.start()                                            # attach, read events
        text = exporter.scrape()                                    # exposition bytes

Everything a config says is checked against its object before anything is loaded:
that each metric's map exists, has u64 values and an iterable type (or is a ring/perf
buffer for event counters), and that its labels fit the key. Errors name the config
file, line and key. ``close()`` detaches every program and frees every map.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from .._exceptions import BpfloomError
from .._terminal import escape_control
from ..batch import Batch
from ..decode import Decoder
from ..maps import Map
from ..object import BpfObject
from ..perfbuf import PerfBuffer
from ..pipeline import Pipeline
from ..ringbuf import RingBuffer
from ..types import Array, Int, Type, describe, strip
from . import exposition
from .collector import (
    CPU_LABEL,
    CPU_LABEL_SIZE,
    Collector,
    CounterCollector,
    EventCounts,
    HistogramCollector,
    LabelSlot,
    MapSource,
    Source,
    plan_labels,
)
from .config import METRIC_PREFIX, Config, LabelConfig, MetricConfig, load_configs
from .decoders import DecoderChain, KallSyms
from .server import MetricsServer

log = logging.getLogger(__name__)

# Map types whose entries can be walked and read as u64 values.
MAP_TYPES = ("hash", "array", "percpu_hash", "percpu_array", "lru_hash", "lru_percpu_hash")
EVENT_TYPES = {"ring_buffer": "ringbuf", "perf_event_array": "perf_event_array"}
_U8 = Int("unsigned char", 1, False)


class Exporter:
    """Objects of ``configs`` and the collectors of their metrics.

    ``max_series`` caps every metric that sets no ``max_series`` of its own (None: no
    cap). ``scrape()`` is thread-safe (scrapes are serialised). Not restartable.
    """

    def __init__(self, configs: Sequence[Config], *, max_series: int | None = None) -> None:
        self.configs = list(configs)
        self.max_series = max_series
        self.objects: dict[str, BpfObject] = {}
        self.collectors: dict[str, list[Collector]] = {}
        self._event_counts: dict[str, dict[str, tuple[EventCounts, Map, Type]]] = {}
        self._pipelines: list[Pipeline] = []
        self._readers: list[RingBuffer | PerfBuffer] = []
        self._lock = threading.Lock()
        self._logged: dict[int, str] = {}
        self.started = False
        #: Scrapes served and their durations in log2 buckets of µs (``self_metrics``).
        self.scrapes = 0
        self.scrape_buckets = [0] * 32
        self.scrape_seconds = 0.0
        try:
            for config in self.configs:
                self._open(config)
        except BaseException:
            self.close()
            raise

    # --- opening and checking ----------------------------------------------------------

    def _open(self, config: Config) -> None:
        obj = BpfObject(config.bpf_path, strings="surrogateescape")
        self.objects[config.name] = obj
        self.collectors[config.name] = []
        self._event_counts[config.name] = {}
        if config.kaddrs:
            self._set_kaddrs(config, obj)
        for metric in config.metrics:
            self.collectors[config.name].append(self._collector(config, obj, metric))

    def _set_kaddrs(self, config: Config, obj: BpfObject) -> None:
        """``kaddr_<symbol>`` globals get the symbols' addresses, as ebpf_exporter sets
        them (``const volatile u64 kaddr_<symbol>``)."""
        where = config.kaddrs_where
        assert where is not None
        try:
            kallsyms = KallSyms.load()
        except BpfloomError as exc:
            raise where.error(str(exc)) from None
        for symbol in config.kaddrs:
            address = kallsyms.by_name.get(symbol)
            if address is None:
                raise where.error(f"no symbol {symbol!r} in {KallSyms.path}")
            name = f"kaddr_{symbol}"
            if name not in obj.globals:
                raise where.error(
                    f"{config.bpf_path} has no global {name!r} (declare "
                    f"`const volatile u64 {name};`)"
                )
            obj.globals[name] = address

    def _collector(self, config: Config, obj: BpfObject, metric: MetricConfig) -> Collector:
        m = obj.maps.get(metric.name)
        if m is None:
            names = ", ".join(sorted(obj.maps)) or "none"
            raise metric.where.error(
                f"no map named {metric.name!r} in {config.bpf_path} (a metric reads the map "
                f"named like it; maps: {names})"
            )
        max_series = metric.max_series if metric.max_series is not None else self.max_series
        source: Source
        if metric.event_driven:
            source, slots = self._event_source(config, obj, metric, m)
            return CounterCollector(config.name, metric, source, slots, max_series=max_series)
        if m.type not in MAP_TYPES:
            raise metric.where.error(
                f"map {metric.name!r} is a {m.type} map; metrics read {', '.join(MAP_TYPES)} "
                "maps (or set ring_buffer/perf_event_array on a counter for event buffers)"
            )
        if m.value_size != 8:
            raise metric.where.error(
                f"the values of map {metric.name!r} are {m.value_size} bytes "
                f"({describe(m.value_type)}); metrics need u64 values (8 bytes)"
            )
        labels = metric.labels
        cpu_slot = None
        if m.percpu and metric.kind != "histogram" and labels and labels[-1].name == CPU_LABEL:
            cpu_slot = self._cpu_slot(labels[-1])
            labels = labels[:-1]
        slots = plan_labels(labels, m.key_size, m.key_type, f"key of map {metric.name!r}")
        source = MapSource(m, obj.possible_cpus)
        if metric.kind == "histogram":
            return HistogramCollector(config.name, metric, source, slots, max_series=max_series)
        return CounterCollector(
            config.name,
            metric,
            source,
            slots,
            cpu_slot=cpu_slot,
            max_series=max_series,
            kind=metric.kind,
        )

    def _cpu_slot(self, label: LabelConfig) -> LabelSlot:
        size = label.size if label.size is not None else CPU_LABEL_SIZE
        if size != CPU_LABEL_SIZE:
            raise label.where.error(
                f"the cpu label of a per-CPU map is the CPU number as {CPU_LABEL_SIZE} bytes "
                f"(size: {CPU_LABEL_SIZE}), not {size}"
            )
        return LabelSlot(label.name, 0, size, DecoderChain(label, size))

    def _event_source(
        self, config: Config, obj: BpfObject, metric: MetricConfig, m: Map
    ) -> tuple[EventCounts, list[LabelSlot]]:
        flag = "ring_buffer" if metric.ring_buffer else "perf_event_array"
        if m.type != EVENT_TYPES[flag]:
            raise metric.where.error(
                f"{flag}: true, but map {metric.name!r} is a {m.type} map, not a "
                f"{EVENT_TYPES[flag]}"
            )
        if all(label.size is not None for label in metric.labels):
            span = 0
            offset = 0
            for label in metric.labels:
                assert label.size is not None
                span = max(span, offset + label.size)
                if not label.reuse:
                    offset += label.size + label.padding
            record: Type = Array(_U8, max(span, 1))
        else:
            try:
                record = obj.record_type(m.name)
            except BpfloomError as exc:
                first = next(label for label in metric.labels if label.size is None)
                raise first.where.error(
                    f"label {first.name!r} has no size, and the records of {m.name!r} have "
                    f"no type to take it from ({exc}); give size for every label"
                ) from None
        size = Decoder(record).size
        slots = plan_labels(metric.labels, size, record, f"records of {m.name!r}")
        counts = EventCounts(size, metric.flush_interval)
        self._event_counts[config.name][m.name] = (counts, m, record)
        return counts, slots

    # --- life cycle ------------------------------------------------------------------

    def load(self) -> Exporter:
        """Load every object (the verifier); raises ``LoadError`` naming the object."""
        for obj in self.objects.values():
            obj.load()
        return self

    def start(self) -> Exporter:
        """Start reading event buffers, then attach every program by its SEC() name."""
        for name, counters in self._event_counts.items():
            if not counters:
                continue
            obj = self.objects[name]
            readers: list[RingBuffer | PerfBuffer] = []
            for _, m, record in counters.values():
                decoder = Decoder(strip(record) or record)
                reader: RingBuffer | PerfBuffer
                if m.type == "ringbuf":
                    reader = RingBuffer(m.fd, m.max_entries, decoder, name=m.name, owner=obj)
                else:
                    reader = PerfBuffer(m, decoder, owner=obj)
                readers.append(reader)
                self._readers.append(reader)
            sinks = {m.name: counts for counts, m, _ in counters.values()}

            def count(batch: Batch, sinks: dict[str, EventCounts] = sinks) -> None:
                sinks[batch.source].add(batch.records)

            pipeline = Pipeline(readers, count, executor="inline", batch=True)
            pipeline.start()
            self._pipelines.append(pipeline)
        for obj in self.objects.values():
            obj.attach_all()
        self.started = True
        return self

    def close(self) -> None:
        """Stop readers, detach every program, unload every object (idempotent)."""
        for pipeline in self._pipelines:
            pipeline.stop()
        self._pipelines.clear()
        for reader in self._readers:
            reader.close()
        self._readers.clear()
        for obj in self.objects.values():
            obj.close()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- scraping --------------------------------------------------------------------

    def scrape(self) -> bytes:
        """The exposition text of every metric, read from the maps now."""
        started = time.perf_counter()
        try:
            return self._scrape()
        finally:
            took = time.perf_counter() - started
            with self._lock:
                self.scrapes += 1
                self.scrape_seconds += took
                micros = int(took * 1e6)
                self.scrape_buckets[min(micros.bit_length(), 31)] += 1

    def self_metrics(self) -> bytes:
        """bpfloom's own series about this exporter (``--metrics-addr``): scrapes and
        their durations, read errors and the event counters' pipelines."""
        with self._lock:
            scrapes, total, buckets = self.scrapes, self.scrape_seconds, list(self.scrape_buckets)
            read_errors = [
                (c.name, collector.name, collector.read_errors)
                for c in self.configs
                for collector in self.collectors[c.name]
            ]
        tool = ("tool",), ("export",)
        out = [exposition.header("bpfloom_export_scrapes_total", "counter", "Scrapes served.")]
        out.append(f'bpfloom_export_scrapes_total{{tool="export"}} {scrapes}\n')
        name = "bpfloom_export_scrape_duration_seconds"
        out.append(exposition.header(name, "histogram", "Time to read the maps for a scrape."))
        cumulative = 0
        for i, n in enumerate(buckets):
            cumulative += n
            le = exposition.go_float(float(1 << i) / 1e6)
            block = exposition.label_block(("tool", "le"), ("export", le))
            out.append(f"{name}_bucket{{{block}}} {cumulative}\n")
        out.append(f'{name}_bucket{{tool="export",le="+Inf"}} {scrapes}\n')
        out.append(f'{name}_sum{{tool="export"}} {exposition.go_float(total)}\n')
        out.append(f'{name}_count{{tool="export"}} {scrapes}\n')
        name = "bpfloom_export_read_errors_total"
        out.append(exposition.header(name, "counter", "Scrapes of a metric whose map read failed."))
        for config, metric, n in read_errors:
            block = exposition.label_block(("tool", "config", "metric"), (*tool[1], config, metric))
            out.append(f"{name}{{{block}}} {n}\n")
        return "".join(out).encode()

    def _scrape(self) -> bytes:
        with self._lock:
            out: list[str] = []
            errors: list[tuple[str, int]] = []
            overflow: list[tuple[str, str, int]] = []
            for config in self.configs:
                failed = 0
                for collector in self.collectors[config.name]:
                    try:
                        collector.collect(out)
                    except BpfloomError as exc:
                        collector.read_errors += 1
                        collector.last_error = str(exc)
                    failed += collector.decode_errors
                    self._log_errors(collector)
                    if collector.max_series is not None:
                        overflow.append((config.name, collector.name, collector.overflowed))
                errors.append((config.name, failed))
            out.append(self._builtins(errors, overflow))
            return "".join(out).encode("utf-8", "surrogateescape")

    def _builtins(self, errors: list[tuple[str, int]], overflow: list[tuple[str, str, int]]) -> str:
        """ebpf_exporter's own series (enabled configs, decoder errors), and ours for
        capped metrics (label sets folded into the overflow series)."""
        name = METRIC_PREFIX + "enabled_configs"
        lines = [exposition.header(name, "gauge", "The set of enabled configs")]
        lines += [f'{name}{{name="{exposition.escape_value(c.name)}"}} 1\n' for c in self.configs]
        name = METRIC_PREFIX + "decoder_errors_total"
        lines.append(
            exposition.header(name, "counter", "How many times has decoders encountered errors")
        )
        lines += [f'{name}{{config="{exposition.escape_value(c)}"}} {n}\n' for c, n in errors]
        if overflow:
            name = METRIC_PREFIX + "overflow_label_sets"
            lines.append(
                exposition.header(
                    name,
                    "gauge",
                    "Label sets past the metric's max_series, summed into its __overflow__ "
                    "series at the last scrape",
                )
            )
            lines += [
                f'{name}{{config="{exposition.escape_value(c)}",'
                f'metric="{exposition.escape_value(m)}"}} {n}\n'
                for c, m, n in overflow
            ]
        return "".join(lines)

    def _log_errors(self, collector: Collector) -> None:
        message = collector.labels.last_error or collector.last_error
        if message and self._logged.get(id(collector)) != message:
            self._logged[id(collector)] = message
            log.warning(
                "bpfloom export: metric %s: %s",
                collector.name,
                escape_control(message),
            )


@contextmanager
def serving(
    config_paths: Sequence[str],
    listen: tuple[str, int],
    *,
    max_series: int | None = None,
    metrics_addr: tuple[str, int] | None = None,
) -> Iterator[MetricsServer]:
    """Load the configs, bind ``listen``, load and attach everything, and serve
    ``/metrics`` until the ``with`` block ends; then stop serving and detach.
    ``metrics_addr`` also serves the exporter's own series (``Exporter.self_metrics``).

    The addresses are bound before anything is loaded: an address in use fails before a
    single program runs. Raises ``BpfloomError`` (config, load, attach, an address).
    """
    configs = load_configs(list(config_paths))
    with Exporter(configs, max_series=max_series) as exporter:
        server = _bind(listen, exporter.scrape, "cannot listen on")
        own = None
        try:
            if metrics_addr is not None:
                own = _bind(metrics_addr, exporter.self_metrics, "--metrics-addr")
            exporter.load()
            exporter.start()
            server.start()
            if own is not None:
                own.start()
            yield server
        finally:
            server.close()
            if own is not None:
                own.close()


def _bind(address: tuple[str, int], scrape: Callable[[], bytes], what: str) -> MetricsServer:
    try:
        return MetricsServer(address, scrape)
    except OSError as exc:
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        reason = exc.strerror or str(exc)
        raise BpfloomError(f"{what} {host}:{address[1]}: {reason}") from exc
