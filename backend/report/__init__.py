"""The loop's report: one self-contained HTML page (``page``) of what the store holds (``data``: versions'
held-out scores, correction rates over time, IoU between prediction and accepted mask, the worst recent
corrections), its plots (``figures``, matplotlib's Agg backend, inline PNG) and thumbnails (``thumbnails``),
and the ``report`` command line (``cli``). The web serves it at ``GET /report``.

Torch-free (the web renders it); matplotlib is imported inside the functions that draw.

May import: backend.corrections, backend.versions, backend.images, backend.label_studio, backend.operations
"""
