"""Evaluation as LISA and CoReS report it: ReasonSeg folders and their ground truth rasterised as the released
code does (``reasonseg``, ``polygon_raster``, ``introsort``), gIoU/cIoU (``metrics``, torch-free) and
``cores eval`` (``evaluate``).

May import: cores.inference, cores.checkpoints, cores.modeling, cores.errors
"""
