"""The ``bpfloom`` command line: a thin layer over the public API.

One module per command group, each adding its commands to the click group of
``_app``: ``run`` (any object, and ``demo``), ``tools`` (execsnoop, opensnoop,
exitsnoop, syscount, goroutines), ``metrics`` (runqlat, biolatency, hardirqs,
softirqs), ``detect``, ``export``, ``collect`` (the fleet's records, from NATS),
``tcp`` (tcplife, tcpstates, tcpconnect, tcpconnlat, tcpaccept), ``tcpstats``
(tcpretrans, tcprtt, tcptop), ``flows``, ``doctor``. All of them run through one loop
(``_session.run_session``): sources → Pipeline → sinks. The library never imports
this package.

Errors are one line on stderr; status 2 for a wrong command line, 1 for a failed run;
never a traceback (set ``BPFLOOM_DEBUG=1`` to see one).
"""

from __future__ import annotations

import os
import sys

import click

from .._exceptions import BpfloomError
from . import (  # noqa: F401  (they add their commands)
    collect,
    detect,
    doctor,
    export,
    flows,
    metrics,
    run,
    tcp,
    tcpstats,
    tools,
)
from ._app import main
from ._common import fail, usage_fail

__all__ = ["entry", "main"]


def entry() -> None:
    """Console entry point: every error is one line on stderr (``bpfloom: error: ...``)
    with status 2 for a wrong command line and 1 for a failed run; an unexpected
    exception too (status 1), unless BPFLOOM_DEBUG is set."""
    try:
        status = main.main(prog_name="bpfloom", standalone_mode=False)
        sys.exit(status if isinstance(status, int) else 0)
    except SystemExit:
        raise
    except click.exceptions.Abort:  # Ctrl-C or end of input at a prompt
        sys.exit(130)
    except click.ClickException as exc:
        usage_fail(exc)
    except KeyboardInterrupt:
        sys.exit(130)
    except BpfloomError as exc:
        fail(str(exc))
    except Exception as exc:
        if os.environ.get("BPFLOOM_DEBUG"):
            raise
        fail(f"internal error: {type(exc).__name__}: {exc} (BPFLOOM_DEBUG=1 shows a traceback)")
