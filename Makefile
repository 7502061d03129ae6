# The two commands of the README. Both install what they need first (Debian packages, .venv).
.PHONY: demo test bench soak

demo:
	@bash scripts/bootstrap.sh
	@.venv/bin/python -m nmi.demo

test:
	@bash scripts/bootstrap.sh
	@.venv/bin/python -m pytest -q

bench:
	@bash scripts/bootstrap.sh
	@.venv/bin/python -m bench

# nmi under steady load and recurring faults; 30 minutes unless SOAK_SECONDS says otherwise. Stops by itself.
soak:
	@bash scripts/bootstrap.sh
	@.venv/bin/python -m pip install -q -e '.[bench]'
	@.venv/bin/python -m bench.soak --seconds $${SOAK_SECONDS:-1800} $(if $(SOAK_OUT),--out $(SOAK_OUT),)
