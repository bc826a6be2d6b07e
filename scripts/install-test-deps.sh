#!/usr/bin/env bash
# Installs what the integration tests need beyond Rust, on Debian bookworm, as root:
#   - gearman-job-server (/usr/sbin/gearmand 1.1.20, the reference server:
#     GEARSHIFT_TEST_SERVER=gearmand cargo test)
#   - gearman-tools (gearman, gearadmin) and libgearman-client-perl (compat tests)
#   - Python `gear` from PyPI (compat tests, and TLS interop in tests/it/tls.rs)
#   - openssl (its s_client drives TLS handshake cases in tests/it/tls.rs)
#   - prometheus (/usr/bin/prometheus and promtool): tests/it/metrics.rs checks the
#     /metrics text with promtool and scrapes it with a throwaway prometheus server;
#     the packaged service is kept from starting and is not used
#   - postgresql, mariadb-server, redis-server: the queue-store tests (tests/it/store/) run
#     throwaway servers from these binaries on loopback (scripts/start-test-stores.sh); their
#     packaged services are kept from starting while they install and are not used
#   - systemd (systemd-analyze) and binutils (strip, objdump): scripts/package-test.sh builds
#     the Debian package and verifies its unit; nothing here runs systemd
# Idempotent: safe to run again. The packaged gearmand service is stopped and
# disabled so nothing is left listening on port 4730.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps.sh: must run as root" >&2
    exit 1
fi

log() { echo "install-test-deps: $*"; }

# --- Debian packages -------------------------------------------------------

PKGS=(gearman-job-server gearman-tools libgearman-client-perl openssl prometheus
      postgresql mariadb-server mariadb-client redis-server systemd binutils)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update
    # Keep the package from starting its service while it installs: a
    # policy-rc.d answering 101 ("action forbidden") is honoured by
    # invoke-rc.d and deb-systemd-invoke. Only remove it if we created it.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get install -y --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}"
    if [ "$created_policy" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    trap - EXIT
else
    log "Debian packages already installed"
fi

# --- make sure the packaged service is not running on 4730 -----------------

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop gearman-job-server.service >/dev/null 2>&1 || true
    systemctl disable gearman-job-server.service >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/gearman-job-server ]; then
    /etc/init.d/gearman-job-server stop >/dev/null 2>&1 || true
fi
if command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d gearman-job-server disable >/dev/null 2>&1 || true
fi
# Last resort: the service's own pid file (Debian runs it with
# --pid-file=/run/gearman/gearmand.pid).
for pidfile in /run/gearman/gearmand.pid /var/run/gearman/gearmand.pid; do
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "gearmand" ]; then
            log "stopping the packaged gearmand (pid $pid)"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
    fi
done

# --- Python gear -----------------------------------------------------------

if python3 -c 'import gear' >/dev/null 2>&1; then
    log "python gear already installed"
else
    if ! python3 -m pip --version >/dev/null 2>&1; then
        log "installing python3-pip"
        apt-get update
        apt-get install -y --no-install-recommends python3-pip
    fi
    export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
    log "pip install gear"
    # Debian's system Python is "externally managed" (PEP 668); fall back to
    # --break-system-packages there. Other interpreters (pyenv, venv) take
    # the plain install.
    if ! python3 -m pip install gear; then
        python3 -m pip install --break-system-packages gear
    fi
    python3 -c 'import gear'
fi

# --- Rust lint and format tools ----------------------------------------------

# scripts/test.sh runs rustfmt and clippy; a minimal toolchain profile lacks them.
for tool in clippy fmt; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        component=$([ "$tool" = fmt ] && echo rustfmt || echo clippy)
        log "rustup component add $component"
        rustup component add "$component"
    fi
done

log "versions: $(/usr/sbin/gearmand --version 2>&1 | tr -d '\n'), gearman $(command -v gearman), gearadmin $(command -v gearadmin)"
perl -MGearman::Client -MGearman::Worker -e 'print "install-test-deps: perl Gearman $Gearman::Client::VERSION\n"'
python3 -c 'import gear, sys; print("install-test-deps: python gear at " + gear.__file__)'
