#!/usr/bin/env bash
# Builds nmi's image without a container registry or engine: a Debian bookworm base made with debootstrap
# (Python 3.11, as in python:3.11-slim-bookworm) stands in for the pinned base, buildah builds the Dockerfile
# with chroot isolation, and the result is checked by running `nmi --version`, `nmi --help`, `pip check` and
# importing python-iptables.
# Needs root and Debian's package mirror; about two minutes. Storage goes to $WORK (default /tmp/nmi-image).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/nmi-image}
export DEBIAN_FRONTEND=noninteractive
command -v buildah >/dev/null && command -v debootstrap >/dev/null || {
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends buildah debootstrap >/dev/null; }
B=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
if [ ! -x "$WORK/rootfs/usr/bin/python3" ]; then
  rm -rf "$WORK/rootfs" && mkdir -p "$WORK/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,python-is-python3,ca-certificates \
    bookworm "$WORK/rootfs" http://deb.debian.org/debian > "$WORK/debootstrap.log" 2>&1
fi
# Like the official Debian-based images, keep no package cache in any layer (so the size measured below is
# nmi's, not apt's).
cat > "$WORK/rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
rm -rf "$WORK/rootfs/var/cache/apt/"*.bin "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
# Where PyPI is reached through a TLS-intercepting proxy, the base needs the host's CA bundle to install.
cp /etc/ssl/certs/ca-certificates.crt "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
"${B[@]}" rmi -f localhost/nmi-base >/dev/null 2>&1 || true
ctr=$("${B[@]}" from scratch)
cp -a "$WORK/rootfs/." "$("${B[@]}" mount "$ctr")/"
"${B[@]}" umount "$ctr" >/dev/null
"${B[@]}" commit -q "$ctr" localhost/nmi-base >/dev/null
"${B[@]}" rm "$ctr" >/dev/null
"${B[@]}" bud -q --isolation chroot --pull=never --build-arg PYTHON_IMAGE=localhost/nmi-base -t localhost/nmi:dev .
check=$("${B[@]}" from localhost/nmi:dev)
trap '"${B[@]}" rm "$check" >/dev/null' EXIT
"${B[@]}" run --isolation chroot "$check" -- /opt/venv/bin/nmi --version
"${B[@]}" run --isolation chroot "$check" -- sh -c '/opt/venv/bin/nmi --help >/dev/null && echo "nmi --help: ok"'
"${B[@]}" run --isolation chroot "$check" -- /opt/venv/bin/pip check
"${B[@]}" run --isolation chroot "$check" -- /opt/venv/bin/python -c "import iptc; print('python-iptables loads')"
"${B[@]}" run --isolation chroot "$check" -- sh -c 'if command -v gcc; then exit 1; else echo "no compiler in the image"; fi'
# Sizes as buildah reports them (uncompressed): the image, and the debootstrapped base it was built on.
for image in localhost/nmi:dev localhost/nmi-base; do "${B[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$image"; done
echo "built localhost/nmi:dev (buildah storage in $WORK/storage)"
