"""The bounds on what a rule file can make the loader compute.

A rule file is small text, but lists include lists, macros are inlined wherever they
are named, and YAML aliases repeat whole nodes: without bounds, a few kilobytes expand
to gigabytes or hours (issue 9). Each bound is far above what real rule sets use
(Falco's own rules are about 150 KB, a few thousand YAML values, conditions of at most
a few hundred nodes) and each violation is a ``RuleError`` naming the file and line.

The loader reads these names from this module when it runs, so tests can lower them.
"""

from __future__ import annotations

MAX_FILE_BYTES = 4 << 20
"""Bytes in one rule file; also the characters of its scalars with aliases expanded."""

MAX_YAML_VALUES = 250_000
"""YAML values (nodes) in one file, an alias counting the values it repeats at each use.
Composing costs about 0.6 KB and 20 µs per value with PyYAML's pure-Python loader."""

MAX_NESTING = 100
"""Depth of YAML collections, and of a condition: parentheses and ``not`` as written,
and ``and``/``or``/``not`` levels with macros inlined. The parser recurses per level."""

MAX_CONDITION_NODES = 100_000
"""Nodes of one condition with macros inlined (and a rule's exceptions added):
comparisons, ``and``/``or``/``not``, and each value written inside ``in (...)``."""

MAX_TOTAL_CONDITION_NODES = 1_000_000
"""Nodes of every macro and rule condition of the set together, macros inlined."""

MAX_LIST_ENTRIES = 100_000
"""Entries of one list with inclusions expanded: its values plus one per included list."""

MAX_TOTAL_LIST_ENTRIES = 1_000_000
"""Entries of every list of the set together, inclusions expanded. The walks that check
each ``append`` for inclusion cycles count against it too: every inclusion they follow
is an entry of an expanded list, so they pass this bound only if the lists do."""

MAX_GLOB = 4096
"""Characters of one ``glob`` pattern (translated in linear time; matching an event
value costs at most about pattern length times value length)."""
