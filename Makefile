# make demo   set up .venv, start the Flow, turn the example audio into images in outputs/
# make test   set up .venv, run the test suite
# make serve  set up .venv, start the Flow (S2I_* variables configure it; see README)
# make container-test  build the image, run the Compose stack and one container, send requests (root, Docker; README)
# make docs   set up .venv, build the docs site into site/ (mkdocs, --strict: a broken link fails)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test serve container-test
setup: $(STAMP)

$(STAMP): scripts/setup.sh constraints.txt requirements.txt requirements-dev.txt gateway/requirements.txt executors/whisper/requirements.txt executors/stable_diffusion/requirements.txt executors/store/requirements.txt executors/caption/requirements.txt executors/clip/requirements.txt pyproject.toml
	scripts/setup.sh

demo: $(STAMP)
	$(VENV)/bin/python scripts/demo.py

test: $(STAMP)
	$(VENV)/bin/python -m pytest

serve: $(STAMP)
	$(VENV)/bin/python -m s2i.serve

container-test: $(STAMP)
	$(VENV)/bin/python scripts/container_test.py

.PHONY: docs
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict
