"""Which tasks most need a human: the review score of each prediction from what the model gives
(``score``), the tasks of a project ordered by it with their reasons (``listing``), and a Label Studio
Data Manager view of them (``views``).

Torch-free: the worker scores predictions, the ``review`` command reads them back.

May import: backend.corrections, backend.label_studio, backend.operations
"""
