"""Azure Machine Learning backends.

* :mod:`.v2` — ``azure-ai-ml`` (SDK v2) command jobs that start Ray through ``trainer/bootstrap.py``
  (``RLQ_BACKEND=azureml``): one job on the head cluster, or a GPU head cluster and a CPU worker
  cluster. It submits, polls and cancels; :mod:`.jobs` builds what a job is (its name, clusters,
  command, environment, tags) and :mod:`.runs` reads a job's MLflow run back.
* :mod:`.retired` — ``RLQ_BACKEND=azureml_v1``, the retired SDK v1 ``ReinforcementLearningEstimator``:
  the name resolves and every request is refused at once with the reason and what replaced it.

Shared rooms: :mod:`.errors` (SDK error translation), :mod:`.nsg` (the pure NSG evaluator),
:mod:`.clusters` (which clusters a request needs and why an existing one cannot serve it),
:mod:`.environment` (the image and code snapshot), :mod:`.registry` (a model's champion registered as a
workspace ``Model`` asset). Only the tests use its twins, so they live in
``tests/support/`` (``azureml_twin.py`` for ``MLClient``, ``network_twin.py`` for the NSG check's
ARM reads) and are never deployed.
Nothing here is imported by the core; SDKs are imported lazily.
"""
