"""Wheels that let bench/gpu_pong.sh run on a CUDA machine image whose Python (3.12) has a CUDA
torch but not ray[rllib], gymnasium or ale-py, and that cannot reach a package index.

    python3 bench/gpu_wheels.py [--dest outputs/wheels]      # here, where PyPI is reachable

Downloads the versions this venv runs the trainer with, for CPython 3.12 on manylinux x86-64,
without their dependencies (the image has numpy, torch, opencv, pandas, pyarrow, scipy, aiohttp,
grpcio, protobuf, ...). ray's wheel (79 MB) is repacked without ``ray/jars/`` (the Java worker
jar, 31 MB compressed; no Java here) and the dashboard's JavaScript source maps, and recompressed
with LZMA (pip reads LZMA zip entries), so that everything fits one 64 MiB carry to the machine;
``outputs/wheels`` is git-ignored. bench/gpu_pong.sh installs them with ``pip --no-index
--no-deps --target /tmp/rlq-site``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELS = [
    "ray==2.60.0",
    "gymnasium==1.2.2",
    "farama-notifications==0.0.6",
    "ale-py==0.12.1",
    "dm-tree==0.1.10",
    "lz4==4.4.5",
    "ormsgpack==1.13.1",
    "tensorboardx==2.6.5",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
]
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
]
CARRY_LIMIT = 64 * 2**20


def unused(name: str) -> bool:
    return name.startswith("ray/jars/") or name.endswith(".js.map")


def repack(wheel: Path) -> None:
    """``wheel`` without the unused files, LZMA-compressed, RECORD to match."""
    out = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_LZMA) as dst:
        for info in src.infolist():
            if unused(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(x for x in lines if not unused(x.split(",", 1)[0])).encode()
            dst.writestr(info, data, zipfile.ZIP_LZMA)
    out.replace(wheel)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=str(REPO / "outputs" / "wheels"))
    args = ap.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + WHEELS, check=True)
    for wheel in dest.glob("ray-*.whl"):
        with zipfile.ZipFile(wheel) as z:
            packed = not any(unused(i.filename) for i in z.infolist())
        if not packed:
            print(f"repacking {wheel.name} ({wheel.stat().st_size / 2**20:.0f} MiB)", flush=True)
            repack(wheel)
    total = sum(f.stat().st_size for f in dest.glob("*.whl"))
    print(
        f"{len(list(dest.glob('*.whl')))} wheels in {dest}: {total / 2**20:.1f} MiB (carry limit 64 MiB with the repo)"
    )
    return 0 if total < CARRY_LIMIT - 8 * 2**20 else 1


if __name__ == "__main__":
    sys.exit(main())
