"""The trainer's argument vector, built from a request: the one contract every backend speaks.

Pure and shared by the compute backends, so a request means the same command line on a local Ray
head, a remote Ray cluster and Azure ML. Each value is one argv element: nothing here is ever
joined into a shell string (backends pass the list through ``--argv-from-env``).
"""

from __future__ import annotations

import json
from typing import Any

from shared.models import TrainingRequest


def trainer_argv(
    request: TrainingRequest,
    *,
    output_dir: str,
    checkpoint_freq: int,
    config: dict[str, Any] | None = None,
    stop: dict[str, Any] | None = None,
    restore: str | None = None,
    ray_address: str | None = None,
) -> list[str]:
    """``--run … --env … --config … --stop … --output-dir …`` and the optional flags.

    ``config`` / ``stop`` default to the request's own (a backend passes them when it adds to
    them: a time bound, the seed's worker count); ``restore`` is a path the job can read.
    """
    config = request.config if config is None else config
    stop = request.stop.model_dump(exclude_none=True) if stop is None else stop
    argv = [
        "--run",
        request.algorithm,
        "--env",
        request.env,
        "--config",
        json.dumps(config, sort_keys=True, separators=(",", ":")),
        "--stop",
        json.dumps(stop, sort_keys=True, separators=(",", ":")),
        "--output-dir",
        output_dir,
        *(["--ray-address", ray_address] if ray_address else []),
        "--checkpoint-freq",
        str(int(checkpoint_freq)),
    ]
    if restore:
        argv += ["--restore", restore]
    if request.evaluate is not None:
        argv += ["--evaluate-episodes", str(request.evaluate.episodes)]
        if request.evaluate.gif:
            argv.append("--evaluate-gif")
    return argv
