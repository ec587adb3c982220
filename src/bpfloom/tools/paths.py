"""One spelling per file: the ``norm_path`` that detection rules match on.

A program may name one file many ways (``//etc/shadow``, ``/etc/./shadow``,
``/usr/../etc/shadow``, ``shadow`` inside ``/etc``, a symlink to it). A rule written
for ``/etc/shadow`` must see all of them, so opensnoop and execsnoop (with
``resolve_paths``, as ``bpfloom detect`` runs them) record beside the path as given
(``path``) what the kernel knows:

- a call that opened or executed a file: that file's path as the kernel resolved it
  (``bpfloom_path.h`` walks its dentries up to the root): symlinks, ``.``, ``..``,
  repeated slashes, relative paths, ``/proc/self/fd/N`` and the directory of an
  ``*at()`` call are all resolved; it is the path in the root of the mount namespace
  the kernel walks, so a bind mount shows under its mount point;
- a failed call on a relative path: the directory it starts from (the cwd, or the
  ``*at()`` call's directory descriptor), joined with the path here;
- a failed call on an absolute path: the path itself.

:func:`norm_path` then normalizes lexically: repeated slashes become one, ``.`` goes,
``..`` removes the component before it. For failed calls that is all: symlinks in a
path that could not be opened are not resolved (a ``..`` after a symlink may then name
another directory than the kernel would), and neither is ``/proc/self/fd/N``. A path
too deep or too long for the kernel-side walk (48 components, 4 KiB) falls back to the
lexical form of the path as given.
"""

from __future__ import annotations

# What fs_path holds (BPFLOOM_FS_PATH_* in bpfloom_path.h).
FS_PATH_NONE = 0
FS_PATH_FILE = 1
FS_PATH_DIR = 2


def lexical(path: str) -> str:
    """``path`` with repeated slashes, ``.`` and ``..`` resolved as text
    (``//etc/./x/../shadow`` → ``/etc/shadow``); "" stays ""."""
    if not path:
        return path
    absolute = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append("..")  # a relative path may climb above its start
            continue
        parts.append(part)
    joined = "/".join(parts)
    if absolute:
        return "/" + joined
    return joined or "."


def norm_path(path: str, fs_path: str, kind: int, cut: int) -> str:
    """The one spelling of the file a call named (see the module docstring): from the
    path as given, what the kernel resolved (``fs_path`` of ``kind``) and whether that
    walk was ``cut`` short."""
    if cut == 0 and fs_path:
        if kind == FS_PATH_FILE:
            return fs_path
        if kind == FS_PATH_DIR and not path.startswith("/"):
            return lexical(f"{fs_path}/{path}")
    return lexical(path)
