# fedge: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedge-installed

.PHONY: setup test demo lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[edge,server,export,tff,dev]"
	# TFF pins a jaxlib that no longer exists: install it beside its requirements without deps.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt tensorflow-federated jax jaxlib opt_einsum
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/fedge sim --dataset digits --devices 50 --rounds 30 --clients-per-round 10 \
		--partition dirichlet:0.5 --profiles default --local-epochs 5 --lr 0.2 --out runs/demo

# mypy cannot follow setuptools' package-dir mapping, so lint reads the same folders through a
# link tree laid out as they install (.lint/fedge/server -> server/, ...).
PACKAGES := edge_client server model_export firmware_sim tools
lint: $(STAMP)
	$(BIN)/ruff check $(PACKAGES) tests
	$(BIN)/ruff format --check edge_client server
	rm -rf .lint && mkdir -p .lint/fedge && for p in $(PACKAGES); do ln -s ../../$$p .lint/fedge/$$p; done
	MYPYPATH=.lint $(BIN)/mypy --strict -p fedge.edge_client -p fedge.server
	MYPYPATH=.lint $(BIN)/mypy -p fedge.model_export -p fedge.firmware_sim -p fedge.tools

bench: $(STAMP)
	$(BIN)/python -m tools.bench.train_speed
	$(BIN)/python -m tools.bench.ingest

clean:
	rm -rf $(VENV) runs .lint .pytest_cache .mypy_cache .ruff_cache
