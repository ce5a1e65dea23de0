"""Compute backends: the Ray Jobs API (:mod:`.ray_jobs`), Azure ML (:mod:`.azureml`) and the instant
twin (:mod:`.compute_twin`, ``RLQ_BACKEND=twin``)."""
