"""Label Studio's side of the protocol: the labeling config (``label_config``), predictions in its result
format (``predictions``; ``formats``: one formatter per mask control tag, brush, bitmask and polygon;
``rle``), per-task errors in its answers (``task_errors``), the queries and images
its tasks name (``queries``), how to reach it (``connection``), writing predictions back (``writeback``),
and its webhooks: their bodies (``webhook_payloads``), their secret (``webhook_secret``) and the credentials
the backend puts on them (``webhook_auth``).

Never imports the queues or the worker (backend.jobs), the web or torch.

May import: backend.images, backend.operations
"""
