#!/usr/bin/env bash
# Installs the independent Gearman implementations the tests compare against and drive:
# Debian's gearmand (gearman-job-server), libgearman's gearman/gearadmin (gearman-tools),
# Perl's Gearman::Client/Worker (libgearman-client-perl), and Python's gear (PyPI).
# Idempotent: installs only what is missing. Needs root (or sudo) for apt-get.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

missing=()
[ -x /usr/sbin/gearmand ] || missing+=(gearman-job-server)
command -v gearman >/dev/null && command -v gearadmin >/dev/null || missing+=(gearman-tools)
perl -MGearman::Client -MGearman::Worker -e 1 2>/dev/null || missing+=(libgearman-client-perl)

if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  # Keep the package's service from starting on 4730 where a policy layer allows it.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian package may have started its own gearmand; the tests use their own ports, but a
# stray daemon on 4730 would confuse people running the examples.
if pgrep -x gearmand >/dev/null 2>&1 && [ -x /etc/init.d/gearman-job-server ]; then
  $SUDO /etc/init.d/gearman-job-server stop >/dev/null 2>&1 || true
fi

python3 -c 'import gear' 2>/dev/null \
  || python3 -m pip install -q gear 2>&1 | grep -v -i "warning: running pip as" || true
python3 -c 'import gear'
