"""Inference: ``CoresPipeline`` (image and query in, every chain level's mask out; per-image encodings
cached), what it returns (``result``), image decoding (``images``) and cache keys (``image_keys``), device
and dtype choice (``devices``), drawing masks over an image (``overlay``), the static-shape / CUDA-graph
fast paths (``fast_paths``, ``cuda_graphs``, ``warm_up``) and the bulk micro-batch rule (``memory``).

May import: cores.checkpoints, cores.modeling, cores.errors
"""
