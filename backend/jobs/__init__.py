"""The queues and the worker: queue names and bounded enqueueing (``queues``), the JSON a prediction job
receives (``payloads``), the prediction job (``predict``), who delivers a batch's predictions
(``delivery``), the GPU worker that loads the model once (``worker``), its graceful shutdown
(``shutdown``), riding out Redis outages (``redis_outages``), counting live workers (``census``) and the
embedded Redis of one-machine runs (``embedded``), and one worker per GPU (``gpus``). The prediction job
scores each prediction for review (``backend.review.score``).

The model (cores) is imported inside the worker only, never when the web imports ``queues``.

May import: backend.review, backend.corrections, backend.versions, backend.label_studio, backend.images,
backend.operations, cores
"""
