"""Training requests and the training job: asking for a fine-tune at most once per project
(``requests``), the job that turns logged corrections into a new model version (``job``, run by a worker)
and the ``train`` command line (``cli``).

May import: backend.jobs, backend.corrections, backend.versions, backend.label_studio, backend.images,
backend.operations, cores
"""
