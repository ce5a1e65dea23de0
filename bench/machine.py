"""The machine a benchmark ran on, printed beside its figures (one reader of /proc/cpuinfo for bench/)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The instruction sets that move the trainer's figures: AVX-512 (oneDNN's wider kernels) and native
# bfloat16 (AMX, AVX512-BF16: the Learner's learner_precision "auto"), as /proc/cpuinfo names them.
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def describe() -> str:
    """``2 CPUs (AMD EPYC …; avx2), Linux 6.x``: the cores, the processor model, which of
    :data:`FLAGS` it has, and the kernel."""
    model = flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                have = set(value.split())
                flags = "; " + (" ".join(f for f in FLAGS if f in have) or "none of " + " ".join(FLAGS))
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPUs ({model}{flags}), {platform.system()} {platform.release()}"
