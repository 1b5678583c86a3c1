"""One formatter per Label Studio mask control tag, each writing a level's mask as that tag's result
``value`` and reading it back: ``brush`` (``BrushLabels``, brush RLE), ``bitmask`` (``BitmaskLabels``, a
PNG data URL whose alpha is the mask) and ``polygon`` (``PolygonLabels``, polygons in percent, rasterised
with pycocotools); ``regions`` dispatches on the result ``type``.

Part of ``backend.label_studio`` (its import rule applies). The web process decodes annotations with these
modules: heavy libraries (OpenCV, shapely, pycocotools) are imported inside the functions that need them.
"""
