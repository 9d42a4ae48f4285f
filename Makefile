# The two commands of the README. Each does all set-up itself (scripts/setup.sh is idempotent).
VENV ?= .venv
OUT ?= runs/compare
STRATEGY ?= mirrored

.PHONY: setup compare test bench bench-pipeline clean

setup:
	@bash scripts/setup.sh

compare: setup
	$(VENV)/bin/xfw compare --strategy $(STRATEGY) --out $(OUT)

test: setup
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python benchmarks/loop_overhead.py

clean:
	rm -rf runs .pytest_cache

bench-pipeline: setup
	$(VENV)/bin/python benchmarks/pipeline_microbatches.py
