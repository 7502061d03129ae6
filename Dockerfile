# syntax=docker/dockerfile:1
#
# nmi: node-level token broker. Two stages: the first compiles python-iptables' small C extension and
# installs nmi into a virtualenv; the second is the same slim Python plus the netfilter runtime, with
# no compiler.
#
# Base pinned by digest (python:3.11.9-slim-bookworm, multi-arch index) so that a rebuild gets the same
# bytes; let a dependency bot move the tag and digest together. Override with
# --build-arg PYTHON_IMAGE=... to build on a mirrored or locally made base.
ARG PYTHON_IMAGE=python:3.11.9-slim-bookworm@sha256:dad770592ab3582ab2dabcf0e18a863df9d86bd9d23efcfa614110ce49ac20e4

FROM ${PYTHON_IMAGE} AS build

# python-iptables ships only an sdist; its extension needs a C compiler and libc headers (the Python
# headers come with the base image). Debian package versions are not pinned: bookworm is the pin, and
# exact versions disappear from the mirror with each point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv

WORKDIR /src
# Third-party packages: exactly the versions and sha256 hashes of the lock files (`make lock`), nothing
# resolved at build time. First the build tools (setuptools, wheel), then, built with those and no isolation
# (which would fetch unpinned build tools), the runtime packages, python-iptables' sdist included. --no-deps:
# a package missing from the lock fails `pip check` below instead of being fetched unverified.
COPY requirements-build.lock requirements.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements-build.lock \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps --no-build-isolation -r requirements.lock

# nmi itself, from this source, built with the locked setuptools and wheel; then every requirement checked.
COPY pyproject.toml README.md ./
COPY nmi ./nmi
COPY iptables ./iptables
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip check


FROM ${PYTHON_IMAGE}

# What python-iptables loads at run time: libxtables and libip4tc, plus the match/target extensions
# (libxt_tcp.so, libxt_DNAT.so, ...) that only the iptables package ships. conntrack is for
# --enable-conntrack-deletion. The extension directory has a per-architecture path; a fixed symlink
# lets XTABLES_LIBDIR stay the same on every architecture (python-iptables otherwise asks ldconfig).
# tzdata: the IANA zones of time-boxed bindings (zoneinfo reads /usr/share/zoneinfo; without it every
# aadpodidentity.k8s.io/active-windows annotation, even one in UTC, would be refused as malformed).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables libxtables12 libip4tc2 conntrack tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/lib/*-linux-gnu/xtables /usr/lib/xtables \
    && test -f /usr/lib/xtables/libxt_tcp.so

COPY --from=build /opt/venv /opt/venv

# Bytecode was compiled at install time; the pod's root filesystem is read-only, so never try to write it.
ENV PATH=/opt/venv/bin:$PATH \
    XTABLES_LIBDIR=/usr/lib/xtables \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

LABEL org.opencontainers.image.title="nmi" \
      org.opencontainers.image.description="Node-level Azure token broker, a drop-in replacement for aad-pod-identity's NMI" \
      org.opencontainers.image.licenses="MIT"

# Token server (node loopback), probes, metrics. The DaemonSet runs on the host network.
EXPOSE 2579 8085 9090

# No USER: changing netfilter tables takes root with NET_ADMIN and NET_RAW (the DaemonSet grants only
# those two capabilities). Exec form, no shell in between: SIGTERM from the kubelet reaches nmi itself,
# which removes its iptables chain before it exits.
ENTRYPOINT ["/opt/venv/bin/nmi"]
