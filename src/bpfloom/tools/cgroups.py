"""cgroup id → cgroup path, the cheap enrichment of the tracing tools.

``bpf_get_current_cgroup_id()`` returns the id of the task's cgroup in the unified
(v2) hierarchy, which is the inode number of that cgroup's directory in the cgroup2
mount. So a walk of the mount maps ids to paths; it is redone (at most once a second)
when an unknown id shows up, for cgroups made after the last walk.
"""

from __future__ import annotations

import os
import threading
import time

REWALK_INTERVAL = 1.0


def cgroup2_mount() -> str | None:
    """Where the cgroup2 (unified) hierarchy is mounted, or None."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        return None
    return None


class CgroupPaths:
    """Maps cgroup ids to paths relative to the cgroup2 mount ("/" is the root).

    Thread-safe. Unknown ids (or no cgroup2 mount) give the id as text.
    """

    def __init__(self, mount: str | None = None) -> None:
        self.mount = mount if mount is not None else cgroup2_mount()
        self._paths: dict[int, str] = {}
        self._walked = 0.0
        self._lock = threading.Lock()

    def _walk(self) -> None:
        if self.mount is None:
            return
        paths: dict[int, str] = {}
        for root, _dirs, _files in os.walk(self.mount):
            try:
                ino = os.stat(root).st_ino
            except OSError:
                continue
            rel = os.path.relpath(root, self.mount)
            paths[ino] = "/" if rel == "." else "/" + rel
        self._paths = paths
        self._walked = time.monotonic()

    def path(self, cgroup_id: int) -> str:
        with self._lock:
            found = self._paths.get(cgroup_id)
            if found is None and time.monotonic() - self._walked >= REWALK_INTERVAL:
                self._walk()
                found = self._paths.get(cgroup_id)
        return found if found is not None else str(cgroup_id)

    @staticmethod
    def id_of(path: str) -> int:
        """The cgroup id of a cgroup directory (its inode number)."""
        return os.stat(path).st_ino
