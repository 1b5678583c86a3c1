# Two commands matter: `make setup` (virtualenvs, Chromium) and `make test` (lint, types, all tests).
VENV ?= .venv

.PHONY: setup setup-venv setup-label-studio setup-reference setup-browser test lint format serve demo

setup: setup-venv setup-label-studio setup-reference setup-browser

setup-venv:
	bash scripts/setup_venv.sh

setup-label-studio:
	bash scripts/setup_label_studio.sh

# The trained stack (transformers 4.31 and LISA's other pins) for the fidelity tests (.venv-ref).
setup-reference:
	bash scripts/setup_reference.sh

# Debian's chromium for the browser test (apt-get, needs root; skipped when /usr/bin/chromium exists).
setup-browser:
	bash scripts/setup_browser.sh

test: setup
	bash scripts/test.sh

lint: setup-venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup-venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

serve: setup-venv
	$(VENV)/bin/python -m backend serve

# Segment a generated demo image with a tiny random checkpoint (masks are random: it shows the plumbing).
demo: setup-venv
	test -d models/tiny-demo || $(VENV)/bin/python -m cores make-tiny-checkpoint models/tiny-demo
	$(VENV)/bin/python -c "import numpy as n; from PIL import Image; Image.fromarray((n.random.default_rng(0).random((240, 320, 3)) * 255).astype('uint8')).save('models/demo.png')"
	$(VENV)/bin/python -m cores segment --checkpoint models/tiny-demo --image models/demo.png --query "the thing you would use to cut the bread" --out models/demo-out
