# make train   set up .venv and train the seed's model on the embedded MNIST (the seed's settings: 100 epochs)
# make test    set up .venv and run the tests (CPU only)
# make bench   set up .venv and time training steps on every device present
# make test-layouts  the tests that compare numbers across thread and instruction-set layouts, under each
VENV := .venv
ARGS ?=

.PHONY: setup train test test-layouts bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

train: setup
	$(VENV)/bin/convae train $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(ARGS)

test-layouts: setup
	bash scripts/test-layouts.sh $(ARGS)

bench: setup
	$(VENV)/bin/convae bench $(ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
