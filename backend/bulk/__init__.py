"""Runs over a whole Label Studio project: bulk pre-annotation (``preannotate``).

May import: backend.jobs, backend.versions, backend.label_studio, backend.operations
"""
