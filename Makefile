# The two commands of the README, and a few for developers.
.PHONY: demo test setup lint bench clean

demo: setup
	.venv/bin/coldchain up --demo

test: setup
	.venv/bin/python -m pytest

setup:
	@bash scripts/bootstrap.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy coldchain storage ingest rules notify api embedded gateway_agent firmware_sim

bench: setup
	.venv/bin/python bench/ingest.py --quick
	.venv/bin/python bench/rules.py --quick
	.venv/bin/python bench/gateway.py --quick
	.venv/bin/python bench/notify.py --quick

clean:
	rm -rf .venv .coldchain .pytest_cache .mypy_cache .ruff_cache
