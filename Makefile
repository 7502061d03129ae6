# The two commands of the README, the benchmarks and the release artefacts. Each installs what it needs first.
.PHONY: demo test bench bench-sweep soak manifests lock

demo:
	@bash scripts/bootstrap.sh
	@.venv/bin/python -m demo

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

# deploy/*.yaml for `kubectl apply -f` users, rendered from daemonset/ with the real kustomize (kubectl from the
# test extras). IMAGE is nmi's image reference; the default is the base's placeholder, which never pulls.
IMAGE ?= registry.example/nmi:0.1.0
manifests:
	@bash scripts/bootstrap.sh
	@.venv/bin/python scripts/render_manifests.py --image '$(IMAGE)'

# requirements.lock: the image's exact dependencies with their sha256 hashes, resolved from pyproject.toml
# (Python 3.11, as the image) by pip-tools in a throwaway venv; requirements-build.lock: the same for the build
# tools (setuptools, wheel) that build python-iptables' sdist and nmi. Local pip settings (extra indexes,
# find-links, constraints) are ignored so that only the public index decides.
PIP_COMPILE = env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
	/tmp/nmi-lock-venv/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url
lock:
	@rm -rf /tmp/nmi-lock-venv && python3.11 -m venv /tmp/nmi-lock-venv
	@/tmp/nmi-lock-venv/bin/pip install -q pip-tools==7.6.2
	@$(PIP_COMPILE) --output-file=requirements.lock pyproject.toml
	@$(PIP_COMPILE) --build-deps-for=wheel --only-build-deps --output-file=requirements-build.lock pyproject.toml
