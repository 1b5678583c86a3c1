"""Checkpoints on disk: the released folder layout, key-exact loading and saving, the CLIP tower's loading,
tiny random checkpoints for tests and demos, and building a base from LLaVA-v1 + SAM.

``layout`` is torch-free (the backend's doctor reads checkpoint folders with it).

May import: cores.modeling, cores.errors
"""
