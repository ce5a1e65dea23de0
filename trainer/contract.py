"""What the trainer's nodes publish for rlq's backends to read: one definition for both sides.

``trainer/`` never imports ``shared/`` (it is uploaded alone as the job's code), so the names both
sides must agree on live here, in a module with no imports, and ``shared/`` imports it
(``shared/adapters/compute/azureml/runs.py``):

* :data:`HEAD_ADDRESS_TAG`: the MLflow tag on the head job's run that ``trainer/bootstrap.py`` sets
  to the Ray head's ``<ip>:<port>`` (an address, never the token); the Azure ML backend reads it
  before it submits the worker job;
* :data:`PROGRESS_METRICS`: the MLflow metric names ``trainer/sinks.py`` logs each iteration (one
  iteration's row, ``/`` in a name becoming ``.``: :func:`mlflow_metric_name`) that the backend
  reads back as a run's progress; the iteration is the metrics' ``step``.
"""

from __future__ import annotations

HEAD_ADDRESS_TAG = "rlq.ray_head_address"

METRIC_REWARD_MEAN = "episode_reward_mean"
METRIC_TIMESTEPS = "timesteps"
METRIC_TIME_TOTAL_S = "time_total_s"
METRIC_EPISODES_TOTAL = "episodes_total"
PROGRESS_METRICS = (METRIC_REWARD_MEAN, METRIC_TIMESTEPS, METRIC_TIME_TOTAL_S, METRIC_EPISODES_TOTAL)
STEP_KEY = "iteration"  # a row's iteration: the MLflow step of its metrics, never a metric itself


def mlflow_metric_name(key: str) -> str:
    """The MLflow metric name of a row field: ``/`` (RLlib's learner stats) becomes ``.``."""
    return key.replace("/", ".")
