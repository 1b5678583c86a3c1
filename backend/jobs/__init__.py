"""The queues and the worker: queue names and bounded enqueueing (``queues``), the JSON a prediction job
receives (``payloads``), the prediction job (``predict``), who delivers a batch's predictions
(``delivery``), the GPU worker that loads the model once (``worker``), its graceful shutdown
(``shutdown``), riding out Redis outages (``redis_outages``), counting live workers (``census``), the
embedded Redis of one-machine runs (``embedded``), one worker per GPU (``gpus``), the worker's model fast
paths and warm-up (``fast_start``) and a job's images fetched and resized ahead on a thread pool
(``image_prefetch``). The prediction job scores each prediction for review (``backend.review.score``),
refines a chain with clicks (``refinement``, ``chain_cache``) and warms encoders (``warm``).

The model (cores) is imported inside the worker only, never when the web imports ``queues``.

May import: backend.review, backend.corrections, backend.versions, backend.label_studio, backend.images,
backend.operations, cores
"""
