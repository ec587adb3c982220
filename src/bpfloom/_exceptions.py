"""Every error bpfloom raises, rooted at one class.

    BpfloomError
    ├── ObjectFileError      not a file, not ELF, truncated, no programs, bad BTF/DWARF
    ├── TypeInfoError        a type is missing, ambiguous, or cannot be decoded/encoded
    ├── GlobalError          unknown global variable or a value that does not fit it
    ├── LoadError            the kernel (verifier) rejected the object; has ``log_tail``
    ├── AttachError          a program could not be attached; names program and hook
    ├── MapError             a map operation failed (lookup/update/delete)
    ├── ClosedError          the object, link or reader was already closed
    ├── NotLoadedError       a method that needs a loaded object, called before load()
    ├── AlreadyLoadedError   load() again, or a set-up method after load()
    ├── NotFoundError        no program, map or global of that name (also a KeyError)
    ├── EnvironmentSetupError  tracefs/bpffs missing and cannot be mounted
    └── BpfPermissionError   not root / missing CAP_BPF, CAP_PERFMON (also a PermissionError)

Errors that come from a failed system or libbpf call carry ``errno``.
"""

from __future__ import annotations


class BpfloomError(Exception):
    """Root of every bpfloom error. ``errno`` is set when a system call failed."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class ObjectFileError(BpfloomError):
    """The object file is missing, not ELF, truncated, or holds no programs."""


class TypeInfoError(BpfloomError):
    """Type information (BTF/DWARF) is missing, ambiguous, malformed or unsupported."""


class GlobalError(BpfloomError):
    """An unknown global variable, or a value that does not fit the global's type."""


class LoadError(BpfloomError):
    """The kernel refused to load the object; ``log_tail`` holds the verifier's last lines."""

    def __init__(self, message: str, *, errno: int | None = None, log_tail: str = "") -> None:
        super().__init__(message, errno=errno)
        self.log_tail = log_tail


class AttachError(BpfloomError):
    """A program could not be attached to its hook."""

    def __init__(
        self, message: str, *, errno: int | None = None, program: str = "", hook: str = ""
    ) -> None:
        super().__init__(message, errno=errno)
        self.program = program
        self.hook = hook


class MapError(BpfloomError):
    """A map operation failed."""


class ClosedError(BpfloomError):
    """The resource was closed; it refuses further use."""


class NotLoadedError(BpfloomError):
    """The object is open but not loaded yet: call ``load()`` first."""


class AlreadyLoadedError(BpfloomError):
    """The object is loaded already: what was asked can only happen before ``load()``."""


class NotFoundError(BpfloomError, KeyError):
    """No program, map or global of that name; the message lists the valid ones.

    Also a ``KeyError``, so mappings keyed by name (``obj.globals``) behave as mappings
    (``.get()``, ``in``); printed as its message, without ``KeyError``'s quotes.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class EnvironmentSetupError(BpfloomError):
    """A filesystem the kernel interface needs (tracefs, bpffs) is missing."""


class BpfPermissionError(BpfloomError, PermissionError):
    """The process lacks the privileges BPF needs (root, or CAP_BPF and CAP_PERFMON)."""
