"""Azure Machine Learning backends.

* :mod:`.v2` — the supported path: ``azure-ai-ml`` (SDK v2) command jobs that start Ray through
  ``trainer/bootstrap.py`` on a GPU head cluster and a CPU worker cluster (``RLQ_BACKEND=azureml``).
* :mod:`.v1` — the retired SDK v1 ``ReinforcementLearningEstimator`` (``RLQ_BACKEND=azureml_v1``):
  kept so the product card's name resolves, its submit fails at once with the reason.

Shared rooms: :mod:`.errors` (SDK error translation), :mod:`.nsg` (the pure NSG evaluator),
:mod:`.clusters` (which clusters a request needs and why an existing one cannot serve it),
:mod:`.gateway` (the SDK v1 calls). Twins sit beside their adapters (:mod:`.twin`, :mod:`.v2_twin`).
Nothing here is imported by the core; SDKs are imported lazily.
"""
