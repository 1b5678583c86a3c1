"""Task images: resolving Label Studio URLs, cloud URIs and local paths (``sources``), downloading them
safely (``download``: one URL parser, address checks and pinned connections in ``url_safety`` and
``pinned_http``; Label Studio's Authorization header in ``label_studio_auth``), decoding (``decode``),
caching (``cache``), and their errors (``errors``). ``fetcher.ImageFetcher`` puts them together.

Self-contained: everything is passed in explicitly. Decoding follows the product's one rule,
``cores.inference.images`` (PIL and numpy only).

May import: cores.inference.images
"""
