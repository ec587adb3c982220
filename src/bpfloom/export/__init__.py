"""``bpfloom export``: Prometheus metrics from BPF maps, in cloudflare/ebpf_exporter's
configuration format.

Each config ``<name>.yaml`` sits beside the object ``<name>.bpf.o`` it describes; every
metric reads the map named like it, at scrape time, and turns its keys into labels
through chains of decoders. The modules, in the order data flows:

- ``config``: the YAML format, read with line numbers and checked (``load_configs``);
- ``decoders``: one class per label decoder (``uint``, ``string``, ``ksym``, ...);
- ``mapread``: whole maps read in bulk (BPF_MAP_LOOKUP_BATCH) into numpy arrays;
- ``collector``: rows → label sets → exposition lines, per metric;
- ``exposition``: the text format; ``server``: the HTTP endpoint;
- ``exporter``: objects opened, checked against their configs, loaded, attached.

No command-line library here: ``bpfloom export`` (the CLI) only calls ``serving``.
"""

from __future__ import annotations

from .config import Config, ExportConfigError, MetricConfig, load_config, load_configs
from .decoders import LabelDecoder, decoder_names
from .exporter import Exporter, serving
from .server import DEFAULT_LISTEN, MetricsServer, parse_listen

__all__ = [
    "DEFAULT_LISTEN",
    "Config",
    "ExportConfigError",
    "Exporter",
    "LabelDecoder",
    "MetricConfig",
    "MetricsServer",
    "decoder_names",
    "load_config",
    "load_configs",
    "parse_listen",
    "serving",
]
