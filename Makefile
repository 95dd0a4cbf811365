# Two entry points on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing (scripts/setup.sh picks a CPU or CUDA torch).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup clean

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

setup: $(VENV)/.installed

# The main job: a real search on this machine's CPUs (SQLite file and an embedded Ray),
# ending with the Pareto table and an HTML report; rerunning it adds no trials.
# Then `.venv/bin/hybridnas dashboard` serves the study at http://127.0.0.1:8050/.
demo: $(VENV)/.installed
	$(BIN)/hybridnas doctor
	$(BIN)/hybridnas launch quickstart
	$(BIN)/hybridnas query quickstart --sort val_loss
	$(BIN)/hybridnas report quickstart -o quickstart-report.html

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# ruff and mypy as configured in pyproject.toml (.ci/run runs this before the tests)
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
