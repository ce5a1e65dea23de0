"""Azure Machine Learning backends.

* :mod:`.v2` — ``azure-ai-ml`` (SDK v2) command jobs that start Ray through ``trainer/bootstrap.py``
  (``RLQ_BACKEND=azureml``): one job on the head cluster, or a GPU head cluster and a CPU worker
  cluster.
* :mod:`.retired` — ``RLQ_BACKEND=azureml_v1``, the retired SDK v1 ``ReinforcementLearningEstimator``:
  the name resolves and every request is refused at once with the reason and what replaced it.

Shared rooms: :mod:`.errors` (SDK error translation), :mod:`.nsg` (the pure NSG evaluator),
:mod:`.clusters` (which clusters a request needs and why an existing one cannot serve it),
:mod:`.environment` (the image and code snapshot). Twins sit beside their adapters
(:mod:`.v2_twin` for ``MLClient``, :mod:`.network_twin` for the NSG check's ARM reads).
Nothing here is imported by the core; SDKs are imported lazily.
"""
