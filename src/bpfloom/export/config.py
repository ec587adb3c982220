"""cloudflare/ebpf_exporter's configuration format, read into typed, checked configs.

A config is ``<name>.yaml`` beside ``<name>.bpf.o``. Its keys, as ebpf_exporter reads
them (its README's "Configuration file format")::

    metrics:
      counters:   [{name, help, labels, perf_event_array, flush_interval}]
      histograms: [{name, help, labels, bucket_type, bucket_min, bucket_max,
                    bucket_keys, bucket_multiplier}]
    kaddrs: [symbol, ...]          # sets `const volatile u64 kaddr_<symbol>`
    label:   {name, size, padding, reuse, decoders: [{name, ...}]}
    decoder: {name, static_map, allow_unknown, regexps}

Beyond ebpf_exporter: ``metrics.gauges`` (counters exported as gauges); a label's
``size`` may be left out, to be taken from the map key's BTF; ``max_series`` on a
metric caps its label sets (the rest are summed into one overflow series); and
``ring_buffer: true`` on a counter counts the events of a ring buffer map named like
the metric, one per record, by the labels decoded from the record.

Files are read with ``yaml.compose`` so that every node keeps its line: each error
names the file, the line and the key (``biolatency.yaml:12: metrics.histograms[0].
bucket_type: ...``). A key ebpf_exporter has but bpfloom does not support (tracing
spans, cgroup id maps, ...) is an error too, never silently ignored.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .._exceptions import BpfloomError

METRIC_PREFIX = "ebpf_exporter_"
MAX_CONFIG_BYTES = 1 << 20  # far above any real config; bounds what a file makes us parse
MAX_BUCKETS = 4096  # buckets per histogram: each label set writes one line per bucket
BUCKET_TYPES = ("exp2", "exp2zero", "linear", "fixed")

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

# Keys ebpf_exporter reads that bpfloom does not implement: an error that says so.
_UNSUPPORTED = {
    "config": {"tracing": "tracing spans", "cgroup_id_map": "cgroup id maps"},
    "label": {},
    "decoder": {},
}


class ExportConfigError(BpfloomError):
    """A config file is invalid or asks for what bpfloom does not support; the message
    names the file, the line and the key."""


@dataclass(frozen=True)
class Where:
    """Where a config item is: file, line (1-based) and key path."""

    file: str
    line: int
    key: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}"

    def error(self, message: str) -> ExportConfigError:
        return ExportConfigError(f"{self}: {message}")


@dataclass(frozen=True)
class DecoderConfig:
    """One decoder of a label's chain, with its own settings."""

    name: str
    where: Where
    static_map: dict[str, str] | None = None
    allow_unknown: bool = False
    regexps: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelConfig:
    """How one label is cut from the key (``size`` bytes, then ``padding`` skipped;
    ``reuse`` reads the same bytes again for the next label) and decoded."""

    name: str
    where: Where
    size: int | None
    padding: int = 0
    reuse: bool = False
    decoders: tuple[DecoderConfig, ...] = ()


@dataclass(frozen=True)
class MetricConfig:
    """A counter, gauge or histogram read from the map named like it."""

    kind: str  # "counter", "gauge" or "histogram"
    name: str
    help: str
    labels: tuple[LabelConfig, ...]
    where: Where
    max_series: int | None = None
    perf_event_array: bool = False
    ring_buffer: bool = False
    flush_interval: float | None = None
    bucket_type: str = ""
    bucket_min: int = 0
    bucket_max: int = 0
    bucket_keys: tuple[float, ...] = ()
    bucket_multiplier: float = 1.0

    @property
    def full_name(self) -> str:
        """The exported name: ebpf_exporter's ``ebpf_exporter_`` prefix, then ``name``."""
        return METRIC_PREFIX + self.name

    @property
    def event_driven(self) -> bool:
        """Counted from a ring buffer's or perf buffer's events, not read from a map."""
        return self.perf_event_array or self.ring_buffer


@dataclass(frozen=True)
class Config:
    """One ``<name>.yaml`` and the object ``<name>.bpf.o`` beside it."""

    name: str
    path: str
    bpf_path: str
    metrics: tuple[MetricConfig, ...]
    kaddrs: tuple[str, ...] = ()
    kaddrs_where: Where | None = None


def load_configs(paths: list[str] | tuple[str, ...]) -> list[Config]:
    """Read and check every config; raises ``ExportConfigError`` at the first problem.

    Two configs with the same name (``a/x.yaml`` and ``b/x.yaml``) are refused, as
    ebpf_exporter refuses them: metrics and built-in series are keyed by it.
    """
    configs: list[Config] = []
    seen: dict[str, str] = {}
    for path in paths:
        config = load_config(path)
        if config.name in seen:
            raise ExportConfigError(
                f"{path}: a config named {config.name!r} is already loaded ({seen[config.name]})"
            )
        seen[config.name] = path
        configs.append(config)
    names: dict[str, str] = {}
    for config in configs:
        for metric in config.metrics:
            other = names.get(metric.full_name)
            if other is not None:
                raise metric.where.error(
                    f"metric {metric.full_name} is defined twice ({other} and here)"
                )
            names[metric.full_name] = str(metric.where)
    return configs


def load_config(path: str) -> Config:
    """One config file, with ``<name>.bpf.o`` beside it (which must exist)."""
    p = Path(path)
    file = os.fspath(path)
    if not p.name.endswith((".yaml", ".yml")):
        raise ExportConfigError(f"{file}: a config is a <name>.yaml file beside <name>.bpf.o")
    name = p.name.rsplit(".", 1)[0]
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ExportConfigError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise ExportConfigError(f"{file}: is a directory, not a config file") from None
    except OSError as exc:
        raise ExportConfigError(f"{file}: {exc.strerror}", errno=exc.errno) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ExportConfigError(f"{file}: larger than {MAX_CONFIG_BYTES} bytes; not a config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExportConfigError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    bpf_path = os.fspath(p.with_name(name + ".bpf.o"))
    if not os.path.exists(bpf_path):
        raise ExportConfigError(
            f"{file}: no object {bpf_path} beside it (a config <name>.yaml goes with the "
            "compiled <name>.bpf.o)"
        )
    root = _compose(file, text)
    return _Reader(file).config(name, file, bpf_path, root)


def _compose(file: str, text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = "; ".join(part for part in (e.context, e.problem) if part)
        raise ExportConfigError(f"{file}:{line}: invalid YAML: {problem}") from e
    except yaml.YAMLError as e:
        raise ExportConfigError(f"{file}: invalid YAML: {e}") from e


_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"


class _Reader:
    """Turns the node tree of one file into configs, checking as it goes."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._constructor = yaml.constructor.SafeConstructor()

    def where(self, node: yaml.Node, key: str) -> Where:
        return Where(self.file, node.start_mark.line + 1, key)

    def mapping(
        self, node: yaml.Node, key: str, known: set[str], unsupported: dict[str, str]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """A mapping's entries by key name (key node, value node); unknown, unsupported
        or repeated keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            raise self.where(node, key).error("expected a mapping of keys to values")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise self.where(k, key).error("keys must be plain names")
            name = str(k.value)
            path = f"{key}.{name}" if key else name
            if name in unsupported:
                raise self.where(k, path).error(
                    f"{unsupported[name]} are not supported by bpfloom export"
                )
            if name not in known:
                raise self.where(k, path).error(
                    f"unknown key {name!r}; expected one of {', '.join(sorted(known))}"
                )
            if name in out:
                raise self.where(k, path).error("given twice")
            out[name] = (k, v)
        return out

    def sequence(self, node: yaml.Node, key: str) -> list[yaml.Node]:
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG:
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.where(node, key).error("expected a list")
        return list(node.value)

    def scalar(self, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.where(node, key).error("expected a single value, not a list or mapping")
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.where(node, key).error(f"invalid value: {exc}") from exc

    def string(self, node: yaml.Node, key: str, *, empty: bool = False) -> str:
        value = self.scalar(node, key)
        if node.tag == _NULL_TAG and empty:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise self.where(node, key).error(f"expected text, not {value!r}")
        text = str(node.value) if not isinstance(value, str) else value
        if not text and not empty:
            raise self.where(node, key).error("must not be empty")
        return text

    def integer(self, node: yaml.Node, key: str, *, minimum: int = 0) -> int:
        value = self.scalar(node, key)
        if node.tag != _INT_TAG or isinstance(value, bool):
            raise self.where(node, key).error(f"expected an integer, not {node.value!r}")
        if value < minimum:
            raise self.where(node, key).error(f"must be at least {minimum}, not {value}")
        return int(value)

    def number(self, node: yaml.Node, key: str) -> float:
        value = self.scalar(node, key)
        if node.tag not in (_INT_TAG, _FLOAT_TAG) or isinstance(value, bool):
            raise self.where(node, key).error(f"expected a number, not {node.value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise self.where(node, key).error(f"expected a finite number, not {node.value!r}")
        return number

    def boolean(self, node: yaml.Node, key: str) -> bool:
        value = self.scalar(node, key)
        if node.tag != _BOOL_TAG:
            raise self.where(node, key).error(f"expected true or false, not {node.value!r}")
        return bool(value)

    # --- the format ------------------------------------------------------------------

    def config(self, name: str, path: str, bpf_path: str, root: yaml.Node | None) -> Config:
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _NULL_TAG):
            raise ExportConfigError(f"{self.file}: empty config: nothing to export")
        top = self.mapping(root, "", {"metrics", "kaddrs"}, _UNSUPPORTED["config"])
        metrics: list[MetricConfig] = []
        if "metrics" in top:
            _, node = top["metrics"]
            if not (isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG):
                kinds = self.mapping(node, "metrics", {"counters", "gauges", "histograms"}, {})
                for group, kind in (
                    ("counters", "counter"),
                    ("gauges", "gauge"),
                    ("histograms", "histogram"),
                ):
                    if group in kinds:
                        items = self.sequence(kinds[group][1], f"metrics.{group}")
                        for i, item in enumerate(items):
                            metrics.append(self.metric(item, f"metrics.{group}[{i}]", kind))
        kaddrs: tuple[str, ...] = ()
        kaddrs_where = None
        if "kaddrs" in top:
            key_node, node = top["kaddrs"]
            kaddrs_where = self.where(key_node, "kaddrs")
            names = []
            for i, item in enumerate(self.sequence(node, "kaddrs")):
                symbol = self.string(item, f"kaddrs[{i}]")
                if not re.fullmatch(r"[A-Za-z_.$][A-Za-z0-9_.$]*", symbol):
                    raise self.where(item, f"kaddrs[{i}]").error(
                        f"{symbol!r} is not a kernel symbol name"
                    )
                names.append(symbol)
            kaddrs = tuple(names)
        if not metrics:
            raise self.where(root, "metrics").error(
                "no metrics: give metrics.counters, metrics.gauges or metrics.histograms"
            )
        return Config(name, path, bpf_path, tuple(metrics), kaddrs, kaddrs_where)

    def metric(self, node: yaml.Node, key: str, kind: str) -> MetricConfig:
        common = {"name", "help", "labels", "max_series"}
        if kind == "counter":
            known = common | {"perf_event_array", "flush_interval", "ring_buffer"}
        elif kind == "gauge":
            known = set(common)
        else:
            known = common | {
                "bucket_type",
                "bucket_min",
                "bucket_max",
                "bucket_keys",
                "bucket_multiplier",
            }
        keys = self.mapping(node, key, known, {})
        if "name" not in keys:
            raise self.where(node, key).error("a metric needs a name (the map's name)")
        name = self.string(keys["name"][1], f"{key}.name")
        where = self.where(keys["name"][1], f"{key}.name")
        if not _METRIC_NAME.fullmatch(name):
            raise where.error(f"{name!r} is not a valid Prometheus metric name")
        help_text = (
            self.string(keys["help"][1], f"{key}.help", empty=True) if "help" in keys else ""
        )
        labels: list[LabelConfig] = []
        if "labels" in keys:
            for i, item in enumerate(self.sequence(keys["labels"][1], f"{key}.labels")):
                labels.append(self.label(item, f"{key}.labels[{i}]"))
        seen: set[str] = set()
        for label in labels:
            if label.name in seen:
                raise label.where.error(f"label {label.name!r} is given twice")
            seen.add(label.name)
        values: dict[str, Any] = {}
        if "max_series" in keys:
            values["max_series"] = self.integer(
                keys["max_series"][1], f"{key}.max_series", minimum=1
            )
        for flag in ("perf_event_array", "ring_buffer"):
            if flag in keys:
                values[flag] = self.boolean(keys[flag][1], f"{key}.{flag}")
        if values.get("perf_event_array") and values.get("ring_buffer"):
            raise self.where(keys["ring_buffer"][0], f"{key}.ring_buffer").error(
                "a counter reads either a perf_event_array or a ring buffer, not both"
            )
        if "flush_interval" in keys:
            values["flush_interval"] = self.duration(
                keys["flush_interval"][1], f"{key}.flush_interval"
            )
        metric = MetricConfig(kind, name, help_text, tuple(labels), where, **values)
        if kind == "histogram":
            metric = self.histogram(node, key, keys, metric)
        return metric

    def duration(self, node: yaml.Node, key: str) -> float:
        """A Go duration (``30s``, ``1m30s``, ``500ms``) or a number of seconds."""
        value = self.scalar(node, key)
        if node.tag in (_INT_TAG, _FLOAT_TAG) and not isinstance(value, bool):
            seconds = float(value)
        else:
            text = str(node.value).strip()
            parts = _GO_DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise self.where(node, key).error(
                    f"{text!r} is not a duration such as 30s, 1m30s or 500ms"
                )
            seconds = sum(float(n) * _GO_UNITS[u] for n, u in parts)
        if not math.isfinite(seconds) or seconds <= 0:
            raise self.where(node, key).error("must be a positive duration")
        return seconds

    def histogram(
        self,
        node: yaml.Node,
        key: str,
        keys: dict[str, tuple[yaml.Node, yaml.Node]],
        metric: MetricConfig,
    ) -> MetricConfig:
        if not metric.labels:
            raise self.where(node, key).error(
                "a histogram needs at least one label: the last one is the bucket"
            )
        if "bucket_type" not in keys:
            raise self.where(node, key).error(
                f"a histogram needs bucket_type ({', '.join(BUCKET_TYPES)})"
            )
        type_node = keys["bucket_type"][1]
        bucket_type = self.string(type_node, f"{key}.bucket_type")
        if bucket_type not in BUCKET_TYPES:
            raise self.where(type_node, f"{key}.bucket_type").error(
                f"unknown bucket type {bucket_type!r}; expected one of {', '.join(BUCKET_TYPES)}"
            )
        values: dict[str, Any] = {"bucket_type": bucket_type}
        if "bucket_multiplier" in keys:
            multiplier = self.number(keys["bucket_multiplier"][1], f"{key}.bucket_multiplier")
            if multiplier <= 0:
                raise self.where(keys["bucket_multiplier"][1], f"{key}.bucket_multiplier").error(
                    "must be positive"
                )
            values["bucket_multiplier"] = multiplier
        if bucket_type == "fixed":
            for other in ("bucket_min", "bucket_max"):
                if other in keys:
                    raise self.where(keys[other][0], f"{key}.{other}").error(
                        "fixed histograms take bucket_keys, not bucket_min/bucket_max"
                    )
            if "bucket_keys" not in keys:
                raise self.where(node, key).error("a fixed histogram needs bucket_keys")
            items = self.sequence(keys["bucket_keys"][1], f"{key}.bucket_keys")
            bucket_keys = [self.number(n, f"{key}.bucket_keys[{i}]") for i, n in enumerate(items)]
            if not bucket_keys:
                raise self.where(keys["bucket_keys"][1], f"{key}.bucket_keys").error(
                    "must list at least one bucket key"
                )
            if len(bucket_keys) > MAX_BUCKETS:
                raise self.where(keys["bucket_keys"][1], f"{key}.bucket_keys").error(
                    f"more than {MAX_BUCKETS} buckets"
                )
            if any(later <= earlier for earlier, later in itertools.pairwise(bucket_keys)):
                raise self.where(keys["bucket_keys"][1], f"{key}.bucket_keys").error(
                    "bucket keys must increase"
                )
            values["bucket_keys"] = tuple(bucket_keys)
        else:
            if "bucket_keys" in keys:
                raise self.where(keys["bucket_keys"][0], f"{key}.bucket_keys").error(
                    f"{bucket_type} histograms take bucket_min/bucket_max, not bucket_keys"
                )
            for needed in ("bucket_min", "bucket_max"):
                if needed not in keys:
                    raise self.where(node, key).error(f"a {bucket_type} histogram needs {needed}")
            low = self.integer(keys["bucket_min"][1], f"{key}.bucket_min")
            high = self.integer(keys["bucket_max"][1], f"{key}.bucket_max")
            where_max = self.where(keys["bucket_max"][1], f"{key}.bucket_max")
            if high <= low:
                raise where_max.error(f"must be larger than bucket_min ({low}), not {high}")
            if high - low + 1 > MAX_BUCKETS:
                raise where_max.error(f"more than {MAX_BUCKETS} buckets")
            if bucket_type in ("exp2", "exp2zero") and high > 1023:
                raise where_max.error("2^bucket_max must be a finite float (at most 1023)")
            values["bucket_min"] = low
            values["bucket_max"] = high
        return MetricConfig(**{**metric.__dict__, **values})

    def label(self, node: yaml.Node, key: str) -> LabelConfig:
        keys = self.mapping(
            node, key, {"name", "size", "padding", "reuse", "decoders"}, _UNSUPPORTED["label"]
        )
        if "name" not in keys:
            raise self.where(node, key).error("a label needs a name")
        name = self.string(keys["name"][1], f"{key}.name")
        where = self.where(keys["name"][1], f"{key}.name")
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise where.error(f"{name!r} is not a valid Prometheus label name")
        size = self.integer(keys["size"][1], f"{key}.size", minimum=1) if "size" in keys else None
        padding = self.integer(keys["padding"][1], f"{key}.padding") if "padding" in keys else 0
        reuse = self.boolean(keys["reuse"][1], f"{key}.reuse") if "reuse" in keys else False
        decoders: list[DecoderConfig] = []
        if "decoders" in keys:
            for i, item in enumerate(self.sequence(keys["decoders"][1], f"{key}.decoders")):
                decoders.append(self.decoder(item, f"{key}.decoders[{i}]"))
        if not decoders:
            raise where.error("a label needs at least one decoder (e.g. uint or string)")
        return LabelConfig(name, where, size, padding, reuse, tuple(decoders))

    def decoder(self, node: yaml.Node, key: str) -> DecoderConfig:
        keys = self.mapping(
            node,
            key,
            {"name", "static_map", "allow_unknown", "regexps"},
            _UNSUPPORTED["decoder"],
        )
        if "name" not in keys:
            raise self.where(node, key).error("a decoder needs a name")
        name_node = keys["name"][1]
        name = self.string(name_node, f"{key}.name")
        where = self.where(name_node, f"{key}.name")
        static_map = None
        if "static_map" in keys:
            mapping = keys["static_map"][1]
            if not isinstance(mapping, yaml.MappingNode):
                raise self.where(mapping, f"{key}.static_map").error(
                    "expected a mapping of values to label values"
                )
            static_map = {}
            for k, v in mapping.value:
                if not isinstance(k, yaml.ScalarNode):
                    raise self.where(k, f"{key}.static_map").error("keys must be plain values")
                # As a Go map[string]string: the key's text as written (`1`, `0x10`).
                static_map[str(k.value)] = self.string(v, f"{key}.static_map.{k.value}", empty=True)
        allow_unknown = (
            self.boolean(keys["allow_unknown"][1], f"{key}.allow_unknown")
            if "allow_unknown" in keys
            else False
        )
        regexps: list[str] = []
        if "regexps" in keys:
            for i, item in enumerate(self.sequence(keys["regexps"][1], f"{key}.regexps")):
                pattern = self.string(item, f"{key}.regexps[{i}]")
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise self.where(item, f"{key}.regexps[{i}]").error(
                        f"invalid regular expression {pattern!r}: {exc}"
                    ) from None
                regexps.append(pattern)
        return DecoderConfig(name, where, static_map, allow_unknown, tuple(regexps))
