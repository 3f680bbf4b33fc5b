"""The machine's resources the server watches: how much memory there is (the default memory
watermark is a fraction of it) and how much disk is free. Sizes as people write them, too."""

from __future__ import annotations

import ctypes
import functools
import os
import re
import resource
from pathlib import Path
from typing import Any

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """``"512MiB"``, ``"2GB"``, ``"1000000"`` as bytes; ValueError naming what is accepted."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"{text!r} is not a size; write bytes, or a number with kB, MB, GB, KiB, MiB or GiB"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def parse_watermark(text: str) -> float | int:
    """A fraction of the machine's memory (``"0.4"``, or ``"40%"``), or a size in bytes."""
    text = text.strip()
    if text.endswith("%"):
        fraction = float(text[:-1]) / 100
    elif re.fullmatch(r"0?\.\d+|1(\.0*)?", text):
        fraction = float(text)
    else:
        return parse_size(text)
    if not 0 < fraction <= 1:
        raise ValueError(f"{text!r}: a fraction of memory must be above 0 and at most 1 (100%)")
    return fraction


def total_memory() -> int:
    """The memory this process may use: the machine's, or its cgroup limit if lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return physical
    return min(physical, int(limit)) if limit.isdigit() else physical


def process_memory() -> int:
    """This process's resident memory in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_limit(watermark: float | int) -> int:
    """The high watermark in bytes: a fraction (float) of total memory, or bytes (int)."""
    if isinstance(watermark, float):
        return int(total_memory() * watermark)
    return watermark


#: File descriptors kept back from clients: the store, its WAL, listeners, logs.
FD_RESERVE = 64


def connection_limit() -> int:
    """The most clients the open-file limit allows, keeping FD_RESERVE for the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(soft - FD_RESERVE, 1)


def disk_free(path: Path) -> int:
    """Bytes free for an unprivileged writer on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def human(size: float) -> str:
    """``1536`` as ``"1.5 KiB"``: for log lines and alarms."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def release_free_memory() -> None:
    """Return the C heap's free memory to the system (glibc's ``malloc_trim``).

    Message bodies over 512 bytes live in the C heap, not Python's own arenas. When paging
    frees them, glibc keeps the pages: RSS stays at the high-water mark of bodies in memory
    (93 MB over a 256 MiB watermark in the soak). Elsewhere (musl, macOS) it does nothing.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None
