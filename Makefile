# `make train` and `make test` each do all set-up on a fresh machine (idempotent, quick when done).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU build of torch first: a bare `torch` requirement would resolve to a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install train test test-fast clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[test,smax,slurm]'
	touch $(STAMP)

# The default run: COMA+DMAC (paper hyperparameters, the DMAC authors' schedule) on the reduced
# stochastic game of docs/results, 20k env steps (where its return ratio levels off; README for the figures).
train: $(STAMP)
	$(BIN)/dmac fit --config configs/algorithms/coma_dmac.yaml --config configs/stochastic_game/game.yaml \
		--config configs/stochastic_game/dmac.yaml --config configs/studies/reduced_stochastic_game.yaml \
		--data.max_env_steps 20000
	@echo "TensorBoard: $(BIN)/tensorboard --logdir lightning_logs"

# The regression guard once more on ATen's scalar kernels: a fixture that holds only on the recording
# machine's CPU fails here first (tests/test_regression.py says why it runs in float64).
test: $(STAMP)
	$(BIN)/python -m pytest
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q tests/test_regression.py

# Everything but the slow learning tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache *.egg-info
