"""Detection rules for ``bpfloom detect``: YAML rule files, in the spirit of Falco.

Load a rule set and feed it events (dicts whose ``event`` key names their kind)::

    rules = bpfloom.rules.load_rules()            # the default rules (default.yaml)
    for alert in rules.evaluate({"event": "open", "comm": "cat", "path": "/etc/shadow"}):
        print(alert.priority, alert.output)

Rule files
----------
A file is a YAML list of items; several files load as one set, in order. Names must
be defined before they are used (across files, in load order), as in Falco. Each item
is one of::

    - list: shell_binaries                  # reusable values
      items: [bash, sh, dash]               # a plain item naming an earlier list includes it
    - list: shell_binaries                  # a later item (or file) may extend a list,
      append: true                          # and rules that used it before see the
      items: [zsh]                          # additions (lists only)

    - macro: spawned_process                # a reusable condition, used by name
      condition: event == exec and ret == 0

    - rule: Shell spawned                   # required: rule, condition, output, priority
      condition: spawned_process and comm in (shell_binaries)
      output: "shell %comm (pid %pid) started by %parent_comm"
      priority: NOTICE                      # EMERGENCY ALERT CRITICAL ERROR WARNING NOTICE
                                            # INFORMATIONAL DEBUG (any case)
      desc: optional text
      tags: [process, shell]                # optional
      enabled: true                         # optional; a disabled rule is checked, not run
      rate_limit: 10/m                      # optional: N per s, m, h or e.g. 30s; the
                                            # alerts beyond are counted in ``suppressed``
      threshold: {count: 20, within: 1s, by: pid}   # optional: fire on the count-th match
                                            # within the window, per value of ``by``
                                            # (omit it to count all events together);
                                            # after firing, that window restarts
      exceptions:                           # optional, Falco form: a match of any value
        - name: from_cron                   # tuple cancels the alert
          fields: [parent_comm, path]
          comps: [=, startswith]            # optional, default = for each field
          values: [[cron, /usr/lib/]]       # with comp ``in``, a value is a YAML list
                                            # or a list name

Durations are ``500ms``, ``1s``, ``2m``, ``1h`` or a number of seconds. Duplicate
names, unknown keys or item kinds, and duplicate YAML keys are errors.

Conditions
----------
``field op value`` comparisons joined by ``and``, ``or``, ``not`` and parentheses;
precedence is ``not`` > ``and`` > ``or``. A macro name stands for its condition.

=================  ==========================================================
``==`` or ``=``    equal; ``!=`` not equal
``<`` ``<=`` …     order (int and float fields only)
``in``             ``comm in (bash, sh, shell_binaries)`` or ``comm in shell_binaries``
``startswith``     ``endswith``, ``contains`` (substring): str fields
``glob``           ``path glob "/tmp/*"``: fnmatch rules, ``*`` also matches ``/``
=================  ==========================================================

The left side is always a field, the right side always a literal: a bare word
(``exec``, ``/etc/shadow``, ``/tmp/*``) or a quoted string (``'a b'`` or ``"a b"``,
backslash escapes the next character). A bare word runs until white space or one of
``( ) , " ' = < > !``. Inside ``in ( )``, a bare word naming a list includes the list;
a quoted one never does. Literals are typed by their field when the rules load:
integer fields take integers (``-1``, ``0x41``, ``0o755``), and a quoted literal is
a string, so ``pid == abc`` and ``pid == "1"`` are errors; ``event ==`` must name an
event kind of the schema.

List fields (``args``) accept only ``contains`` (an element equals the value) and
``in`` (some element is in the set, Falco's ``intersects``); other operators are load
errors. A comparison on a field the event lacks, or holds as None, is false, even
with ``!=``.

Which events a rule sees
------------------------
A rule applies to the event kinds that have every field it names (in its condition,
macros, exceptions, output and ``threshold.by``), narrowed by ``event == kind`` or
``event in (...)`` tests the whole condition requires; ``Rule.applies_to`` holds that
set. A rule whose fields never meet in one event kind is a load error.

Output
------
``%field`` is replaced by the field's value (lists joined with spaces, a missing field
as ``<NA>``); ``%%`` is a percent sign. A field name is letters, digits and ``_``.

Errors
------
Every problem raises ``RuleError`` naming the file, the line of the YAML node at fault
and, in a condition, the column: ``rules.yaml:12: rule 'Shell in container':
condition: unknown field 'proc.name' at column 5``. Conditions are parsed, never
evaluated as Python.

Evaluation
----------
``RuleSet.evaluate`` is thread-safe. Thresholds and rate limits count in event time
(the ``time`` field, else the set's clock), so replays and batches are judged by when
things happened. Alerts cut by a rate limit are counted in ``RuleSet.suppressed``.
Rules are isolated: a rule whose evaluation raises on an event (a field holding a
value of another type, say) is skipped for that event, counted in ``RuleSet.errors``
(rule name -> count) and logged on the ``bpfloom.rules`` logger at most once per 5 s;
the other rules still run, and ``evaluate`` does not raise. Matching never recurses
more than 16 calls deep, however long or deep a condition is.

Limits
------
A rule file cannot make loading take unbounded time or memory; past a bound, loading
stops with a ``RuleError`` naming the file and line (and column, in a condition):

=====================================  ============================================
a rule file                            a regular file (not a FIFO, device or
                                       directory) of at most 4 MiB
YAML values in one file                250 000; an alias counts the values it
                                       repeats, and their text counts against the
                                       4 MiB, at each use
YAML nesting; condition nesting        100 levels; in a condition, parentheses and
                                       ``not`` as written, and ``and``/``or``/``not``
                                       levels with macros inlined
one condition, macros inlined          100 000 nodes (comparisons, ``and``/``or``/
                                       ``not``, values written in ``in (...)``; a
                                       rule's exceptions count)
all macro and rule conditions          1 000 000 nodes, macros inlined at each use
one list, inclusions expanded          100 000 entries: its values, plus one and the
                                       included list's entries per inclusion
all lists together                     1 000 000 entries (checking ``append`` for
                                       inclusion cycles counts against it too)
one ``glob`` pattern                   4096 characters (translated in linear time)
=====================================  ============================================

The numbers are in ``bpfloom.rules._limits``; real rule sets (Falco's own are about
150 KB) stay far below them.
"""

from ._engine import DEFAULT_RULES, DEFAULT_SCHEMA, Alert, RuleSet, load_rules
from ._expr import RuleError
from ._loader import PRIORITIES, RateLimit, Rule, Schema, Threshold

__all__ = [
    "DEFAULT_RULES",
    "DEFAULT_SCHEMA",
    "PRIORITIES",
    "Alert",
    "RateLimit",
    "Rule",
    "RuleError",
    "RuleSet",
    "Schema",
    "Threshold",
    "load_rules",
]
