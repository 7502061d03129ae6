# The two commands of the README. Both install what they need first (Debian packages, .venv).
.PHONY: demo test bench

demo:
	@bash scripts/bootstrap.sh
	@.venv/bin/python -m nmi.demo

test:
	@bash scripts/bootstrap.sh
	@.venv/bin/python -m pytest -q

bench:
	@bash scripts/bootstrap.sh
	@.venv/bin/python -m bench
