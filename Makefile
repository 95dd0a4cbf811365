# Two entry points on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing (scripts/setup.sh picks a CPU or CUDA torch).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test setup clean

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

setup: $(VENV)/.installed

# The main job. Until the search exists: the cost of every built-in example layout,
# then one short FLOP-budgeted training run of a small hybrid on the built-in corpus.
demo: $(VENV)/.installed
	$(BIN)/hybridnas doctor
	$(BIN)/hybridnas examples
	@for name in $$($(BIN)/hybridnas examples --names); do \
		$(BIN)/hybridnas inspect "$$name" --seq-len 8192 || exit 1; \
	done
	$(BIN)/hybridnas train M-M-*-M- --d-model 128 --flops 2e12 --seq-len 128

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
