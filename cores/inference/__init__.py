"""Inference: ``CoresPipeline`` (image and query in, every chain level's mask out; per-image encodings
cached), what it returns (``result``), image decoding (``images``), device and dtype choice (``devices``),
and drawing masks over an image (``overlay``).

May import: cores.checkpoints, cores.modeling, cores.errors
"""
