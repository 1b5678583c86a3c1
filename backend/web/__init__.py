"""The web process: the Flask app factory (``app``), its routes, state, request checks and access log,
``/predict``'s dispatch to the queues, the webhook handlers, the ``/metrics`` page, the ``/report`` page
(``backend.report``), and the server processes (``wsgi``: one waitress process; ``server``:
``python -m backend serve``).

Never imports torch, transformers, segment-anything or a cores module that does (the correction log it
records into uses torch-free cores helpers only): tests/test_layout.py imports the web in a fresh process
and checks.

May import: backend.report, backend.training, backend.jobs, backend.corrections, backend.versions,
backend.label_studio, backend.images, backend.operations
"""
