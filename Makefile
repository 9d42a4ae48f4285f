# The two commands of the README. Each does all set-up itself (scripts/setup.sh is idempotent).
VENV ?= .venv
OUT ?= runs/compare
STRATEGY ?= mirrored

.PHONY: setup compare test test-fast bench bench-pipeline clean

setup:
	@bash scripts/setup.sh

compare: setup
	$(VENV)/bin/xfw compare --strategy $(STRATEGY) --out $(OUT)

# Two pytest workers: most of a test's time is a framework starting up on one core. Then the mutation check.
test: setup
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=15
	$(VENV)/bin/python scripts/mutation_check.py

# The unit tier (tests/unit: no framework imported, no worker started), for the inner loop: seconds.
test-fast: setup
	$(VENV)/bin/python -m pytest -q tests/unit

bench: setup
	$(VENV)/bin/python benchmarks/loop_overhead.py

clean:
	rm -rf runs .pytest_cache

bench-pipeline: setup
	$(VENV)/bin/python benchmarks/pipeline_microbatches.py
