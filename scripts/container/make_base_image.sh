#!/usr/bin/env bash
# A stand-in for python:3.11-slim where no registry can be reached: Debian bookworm (whose python3
# is 3.11) from the apt mirror this machine uses, with python3, venv and ca-certificates, and a venv
# first on PATH so that `python` and `pip` behave as in the official image. The host's extra CA
# certificates (/usr/local/share/ca-certificates) go in too, so pip reaches PyPI through an
# intercepting proxy. For tests only: real users pull the real image.
#
#   scripts/container/make_base_image.sh [TAG]     (default: python:3.11-slim)
set -euo pipefail
tag="${1:-python:3.11-slim}"
suite=bookworm

# The first URIs: line of the machine's deb822 sources, else Debian's own mirror.
mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1 | awk '{print $1}')
mirror="${mirror:-http://deb.debian.org/debian}"

# A root filesystem's tar on stdin as the image, with the official image's environment.
import_image() {
  docker import \
    -c 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    -c 'CMD ["python3"]' - "$tag"
}

if command -v mmdebstrap >/dev/null 2>&1; then
  # Straight into `docker import`: no root filesystem left on disk.
  mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"' \
    --customize-hook='for crt in /usr/local/share/ca-certificates/*.crt; do [ -e "$crt" ] && cp "$crt" "$1/usr/local/share/ca-certificates/"; done; true' \
    --customize-hook='chroot "$1" update-ca-certificates' \
    --customize-hook='chroot "$1" python3 -m venv /opt/python' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$suite" - "$mirror" |
    import_image
else
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$rootfs" "$mirror"
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  for crt in /usr/local/share/ca-certificates/*.crt; do [ -e "$crt" ] && cp "$crt" "$rootfs/usr/local/share/ca-certificates/"; done
  chroot "$rootfs" update-ca-certificates
  chroot "$rootfs" python3 -m venv /opt/python
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*
  tar -C "$rootfs" -c . |
    import_image
fi
docker run --rm "$tag" python -c 'import ssl, sys, venv; print("base image:", sys.version.split()[0])'
