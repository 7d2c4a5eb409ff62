# robot-rl: `make demo` and `make test` work on a fresh clone (they create .venv first).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl

.PHONY: demo test test-slow lint bench venv clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/robot-rl demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -m "not slow" --timeout=600 -n 2 --dist loadfile --durations=20

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow --timeout=1800

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint --config .hadolint.yaml docker/Dockerfile

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.lake --quick
	$(VENV)/bin/python -m benchmarks.sampler --quick
	$(VENV)/bin/python -m benchmarks.learner --quick
	$(VENV)/bin/python -m benchmarks.profile_update --quick
	$(VENV)/bin/python -m benchmarks.cem --quick
	$(VENV)/bin/python -m benchmarks.collect --quick
	$(VENV)/bin/python -m benchmarks.ogbench --quick
	$(VENV)/bin/python -m benchmarks.render --quick
	$(VENV)/bin/python -m benchmarks.ingest --quick
	$(VENV)/bin/python -m benchmarks.goal_reaching --quick
	$(VENV)/bin/python -m benchmarks.finetune --quick
	$(VENV)/bin/python -m benchmarks.ope --quick
	$(VENV)/bin/python -m benchmarks.planning --quick
	$(VENV)/bin/python -m benchmarks.detectors --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
