"""Scripts that run in the reference environment ``.venv-ref`` (transformers 4.31.0 and the other pins of
LISA/CoReS; see ``scripts/setup_reference.sh``), never in the project venv. Each reads a JSON request on
stdin and writes its answer (JSON on stdout, or ``.npy`` files it is told to write)."""
