"""The cluster image and code snapshot the Azure ML jobs run: ``trainer/`` and its packages.

Head and workers run one image (``RLQ_AZUREML_BASE_IMAGE``, by default Azure ML's OpenMPI base
image without CUDA, + a conda file made from ``trainer/requirements.txt``): Ray needs the same
Python and Ray on every node, and the torch wheel brings its own CUDA runtime (docs/azure.md,
"Image and CUDA"). The code snapshot
holds only ``trainer/`` (the function app's own folder holds its deployed packages; uploading it
would be slow and could exceed the snapshot limit).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from shared.errors import ComputeError

CONDA_FILE = "rlq_conda_env.yml"
PYTHON_VERSION = "3.11"
TRAINER_DIR = Path(__file__).resolve().parents[4] / "trainer"


def parse_requirements(text: str) -> list[str]:
    """Requirement lines of a pip requirements file (comments, blanks and options dropped)."""
    out = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            out.append(line)
    return out


def conda_file(pip_packages: list[str], python_version: str = PYTHON_VERSION) -> str:
    """A conda environment file: this Python, pip, and the trainer's packages."""
    lines = [
        "name: rlq-trainer",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        f"  - python={python_version}",
        "  - pip",
        "  - pip:",
    ]
    lines += [f"    - {json.dumps(p)}" for p in pip_packages]
    return "\n".join(lines) + "\n"


def environment_version(conda_text: str) -> str:
    """The job environment's version: 12 hex digits of its conda file, so a new trainer requirement
    or a new environment-catalog package is a new environment version (and image build), and the
    same packages keep the version Azure ML already built."""
    return hashlib.sha256(conda_text.encode()).hexdigest()[:12]


def stage_trainer(trainer_dir: Path, catalog_requirements: list[str] | tuple[str, ...] = ()) -> Path:
    """A new folder holding ``trainer/`` and the conda file made from its requirements and the
    environment catalog's pinned requirements (``EnvironmentCatalog.requirements``)."""
    requirements = trainer_dir / "requirements.txt"
    if not requirements.is_file():
        raise ComputeError(f"{requirements} is missing: the cluster image is built from it")
    stage = Path(tempfile.mkdtemp(prefix="rlq-aml-src-"))
    shutil.copytree(
        trainer_dir,
        stage / "trainer",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "outputs", ".pytest_cache"),
    )
    packages = parse_requirements(requirements.read_text()) + list(catalog_requirements)
    (stage / CONDA_FILE).write_text(conda_file(packages))
    return stage
