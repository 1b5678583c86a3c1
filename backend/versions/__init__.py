"""Model versions: the version store under ``MODEL_DIR/versions`` and its pointers (``store``,
``model_version``), which version is served and the base and demo checkpoints (``serving``), the promotion
gate (``gate``), what a checkpoint folder must hold (``checkpoint_files``, torch-free) and the ``versions``
command line (``cli``).

May import: backend.operations, cores.checkpoints.layout, cores.errors
"""
