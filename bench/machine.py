"""The machine a benchmark ran on, printed beside its figures (one reader of /proc/cpuinfo for bench/)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe() -> str:
    """``2 CPUs (AMD EPYC …), Linux 6.x``: the cores, the processor model and the kernel."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}"
