"""The CoReS Label Studio ML backend: Label Studio's ML protocol over rq queues and GPU workers.

Packages, from the processes down to what they all share (each ``__init__`` says what it holds and what
it may import; tests/test_layout.py enforces it):

- ``web``: the web process (Flask app, routes, ``/predict`` dispatch, webhooks, metrics and report pages,
  servers).
- ``bulk``: runs over a whole Label Studio project (pre-annotation).
- ``training``: training requests and the training job.
- ``jobs``: the queues, the prediction job, the GPU worker.
- ``corrections``: the correction log, the prediction memory, the training-data export.
- ``versions``: model versions, which one each project is served, the promotion gate, checkpoint files.
- ``review``: the review score of each prediction and the tasks most in need of a human.
- ``report``: the loop's HTML report (versions' held-out scores, correction rates, worst corrections).
- ``label_studio``: Label Studio's formats and API: labeling config, results, RLE, connection, webhooks.
- ``images``: fetching, decoding and caching task images safely.
- ``operations``: settings, logs, the Redis client, metrics counters, ids.

Entry points at the top: ``python -m backend`` (``cli``) and ``doctor``.
"""
