# The two commands of the README. Both install what they need first (Debian packages, .venv).
.PHONY: demo test bench bench-sweep soak

demo:
	@bash scripts/bootstrap.sh
	@.venv/bin/python -m nmi.demo

test:
	@bash scripts/bootstrap.sh
	@.venv/bin/python -m pytest -q

bench:
	@bash scripts/bootstrap.sh
	@.venv/bin/python -m bench

# Throughput and p99 against 1-256 connections, nmi and the baseline, and the plot in docs/ (needs matplotlib).
bench-sweep:
	@bash scripts/bootstrap.sh
	@.venv/bin/pip install -q -e '.[bench]'
	@.venv/bin/python -m bench.sweep --png docs/performance.png --json docs/performance-sweep.json

# nmi under steady load and recurring faults; 30 minutes unless SOAK_SECONDS says otherwise. Stops by itself.
soak:
	@bash scripts/bootstrap.sh
	@.venv/bin/python -m pip install -q -e '.[bench]'
	@.venv/bin/python -m bench.soak --seconds $${SOAK_SECONDS:-1800} $(if $(SOAK_OUT),--out $(SOAK_OUT),)
