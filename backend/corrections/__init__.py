"""The correction log: what annotators accepted for each chain level, durably in SQLite (``store``,
``reading``, ``database``, ``records``), parsed from Label Studio's webhooks (``annotations``), the
predictions they started from (``prediction_memory`` in Redis, ``enrich`` from Label Studio's API), the
held-out evaluation split (``held_out``), the export as training data (``export``) and the ``corrections``
command line (``cli``).

Torch-free: the web process records webhooks.

May import: backend.label_studio, backend.images, backend.operations, cores.evaluation,
cores.inference.images, cores.modeling.prompts
"""
