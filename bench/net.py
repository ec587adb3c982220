"""Network tools benchmark: what the network tools cost the traffic they watch, and
how fast they turn kernel state into records.

Sections (``--section NAME``, repeatable; default: all of ``SECTIONS``), each a
function taking the parsed arguments and returning one JSON object; their methods are
in their modules' docstrings:

- ``tcplife`` (``bench/net_tcplife.py``): closed sessions per second ``bpfloom tcplife``
  keeps up with during a connection storm, with nothing lost (``tcplife_sessions_per_s``,
  ``tcplife_lost``), the storm's rate against an untraced baseline, and CPU per 10 000
  sessions/s.
- ``flows`` (``bench/net_flows.py``): packets per CPU-second through a veth pair with
  ``bpfloom flows``' programs attached ÷ without (``flows_pps_ratio``), and the export
  rate at 100 000 concurrent flows (``flows_exported_per_s``).

``--seconds`` and ``--rounds`` default per section (tcplife: 5 s, 2 rounds of
baseline/traced phases; flows: 2 s, 5 rounds per condition). Run as root after
``make bpf``. Nothing here asserts a timing. ``--json`` prints one JSON object per
line: one per section, then a summary merging them with the load average before and
after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from net_flows import flows_section
from net_tcplife import tcplife_section

SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "tcplife": tcplife_section,
    "flows": flows_section,
}
# (seconds, rounds) of each section when the command line does not say.
DEFAULTS: dict[str, tuple[float, int]] = {"tcplife": (5.0, 2), "flows": (2.0, 5)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="JSON lines only")
    parser.add_argument("--section", choices=list(SECTIONS), action="append",
                        help="run only this section (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--seconds", type=float, help="seconds per phase or round")
    parser.add_argument("--rounds", type=int, help="rounds (tcplife: baseline/traced pairs)")
    parser.add_argument("--clients", type=int, default=4, help="tcplife storm client processes")
    parser.add_argument("--servers", type=int, default=8, help="tcplife storm server processes")
    parser.add_argument("--payload", type=int, default=100, help="tcplife bytes each way")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = []
    for name in args.section or list(SECTIONS):
        seconds, rounds = DEFAULTS[name]
        section_args = argparse.Namespace(**vars(args))
        section_args.seconds = seconds if args.seconds is None else args.seconds
        section_args.rounds = rounds if args.rounds is None else args.rounds
        results.append(SECTIONS[name](section_args))
    summary: dict[str, Any] = {"section": "summary"}
    for r in results:
        summary.update({k: v for k, v in r.items() if k != "section"})
    summary["loadavg_before"] = [round(x, 2) for x in load_before]
    summary["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    for r in [*results, summary]:
        print(json.dumps(r) if args.json else json.dumps(r, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
