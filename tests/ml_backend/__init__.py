"""Tests of the Label Studio ML backend: web app, queues, worker, jobs, CLI (real Redis, tiny model)."""
