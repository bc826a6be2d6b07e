#!/usr/bin/env bash
# Tests the Debian package as an operator would use it, without touching this machine:
#   1. builds it (scripts/build-deb.sh; pass --no-build to pack target/release as it is);
#   2. in a private mount namespace, lays a copy-on-write overlay over / (writes go to a
#      tmpfs that vanishes with the namespace) and, chrooted there:
#      - edits /etc/default/gearman-job-server as an operator would and enables gearmand's
#        service, then `dpkg -i`s the package over the installed gearman-job-server: dpkg
#        must remove gearmand, take the conffiles over without a prompt (stdin is /dev/null)
#        and keep the edit;
#      - checks the files, the gearman user, the conffiles, and that the service is still
#        enabled (with the alias gearshiftd.service);
#      - runs `systemd-analyze verify` on the unit;
#      - runs the unit's command line with Debian's default PARAMS (--daemon, the log file)
#        as the gearman user on a free port, and stops it gracefully with SIGUSR1: once
#        detached (no systemd), once as systemd would run it ($NOTIFY_SOCKET set: READY=1
#        from the process started, STOPPING=1);
#      - goes back as the README says: `dpkg -r gearshift` (what apt does first for the
#        Conflicts; the conffiles stay) and `dpkg -i` of gearman-job-server's own package
#        (fetched with `apt-get download`), which must take the edited conffile back as is;
#        then `dpkg --purge gearshift` must leave that file to gearman-job-server.
# Why the overlay: the package Conflicts with and Replaces gearman-job-server, so installing
# it for real would remove /usr/sbin/gearmand, which the rest of the tests run against. In
# the namespace the real install runs (maintainer scripts included) and the machine keeps
# gearmand; /run is a fresh tmpfs there, so the scripts see no systemd and start nothing.
# Needs root with CAP_SYS_ADMIN (unshare, mount) and overlayfs, as CI has.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--inside" ]; then
    deb=$2 R=$3 gjs_deb=$4
    # A server started below must not outlive a failed check (it would hold the namespace).
    server_pid=
    # (Every command here must succeed: under set -e a failing one would become the exit
    # status of a test that passed.)
    trap 'if [ -z "$server_pid" ]; then
            server_pid=$(cat "$R/root/run/gearman/gearmand.pid" 2>/dev/null || true)
        fi
        if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; fi' EXIT
    fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
    ok() { echo "package-test: ok: $*"; }

    mount -t tmpfs tmpfs "$R"
    mkdir "$R/upper" "$R/work" "$R/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$R/upper,workdir=$R/work" "$R/root"
    mount --rbind /proc "$R/root/proc"
    mount --rbind /dev "$R/root/dev"
    mount --rbind /sys "$R/root/sys"
    mount -t tmpfs tmpfs "$R/root/run"
    cp "$deb" "$R/root/tmp/gearshift.deb"
    in_root() { chroot "$R/root" "$@"; }

    dpkg-query -W -f='${Status}' gearman-job-server 2>/dev/null | grep -q "install ok installed" ||
        fail "gearman-job-server is not installed: nothing to replace (run scripts/install-test-deps.sh)"
    in_root sh -c 'echo "# an operator'"'"'s edit" >> /etc/default/gearman-job-server'
    # gearmand's service enabled, as on a host where it runs (systemctl works offline here).
    in_root systemctl enable gearman-job-server.service >/dev/null 2>&1 ||
        fail "systemctl enable gearman-job-server.service"

    in_root dpkg -i /tmp/gearshift.deb </dev/null || fail "dpkg -i"
    ok "dpkg -i over gearman-job-server"

    status=$(in_root dpkg-query -W -f='${Status}' gearman-job-server)
    # Removed, its conffiles kept (as `apt remove` leaves them): "<selection> ok config-files".
    [ "${status##* }" = config-files ] || fail "gearman-job-server is '$status', not removed"
    [ ! -e "$R/root/usr/sbin/gearmand" ] || fail "/usr/sbin/gearmand is still there"
    for f in /usr/sbin/gearshiftd /usr/bin/gearshift /lib/systemd/system/gearman-job-server.service \
        /etc/default/gearman-job-server /etc/logrotate.d/gearman-job-server \
        /usr/share/doc/gearshift/copyright /usr/share/doc/gearshift/README.md \
        /usr/share/doc/gearshift/grafana-dashboard.json; do
        owner=$(in_root dpkg-query -S "$f" | cut -d: -f1)
        [ "$owner" = gearshift ] || fail "$f belongs to '$owner'"
    done
    conffiles=$(in_root dpkg-query -W -f='${Conffiles}' gearshift)
    for f in /etc/default/gearman-job-server /etc/logrotate.d/gearman-job-server; do
        grep -q " $f " <<<"$conffiles" || fail "$f is not a conffile: $conffiles"
    done
    grep -q "^# an operator's edit$" "$R/root/etc/default/gearman-job-server" ||
        fail "the operator's edit of /etc/default/gearman-job-server was lost"
    in_root getent passwd gearman >/dev/null || fail "no gearman user"
    [ "$(stat -c %U "$R/root/var/log/gearman-job-server")" = gearman ] ||
        fail "/var/log/gearman-job-server is not the gearman user's"
    in_root /usr/sbin/gearshiftd --version >/dev/null || fail "gearshiftd --version"
    [ -L "$R/root/etc/systemd/system/multi-user.target.wants/gearman-job-server.service" ] ||
        fail "the service is no longer enabled"
    [ "$(readlink "$R/root/etc/systemd/system/gearshiftd.service")" = \
        /lib/systemd/system/gearman-job-server.service ] || fail "no alias gearshiftd.service"
    ok "files, conffiles (edit kept), the gearman user, the service still enabled (alias too)"

    verify=$(in_root systemd-analyze verify /lib/systemd/system/gearman-job-server.service 2>&1) ||
        fail "systemd-analyze verify: $verify"
    if grep -i "gearman-job-server.service" <<<"$verify"; then
        fail "systemd-analyze verify complains about the unit: $verify"
    fi
    ok "systemd-analyze verify gearman-job-server.service"

    # The unit's ExecStart with Debian's default PARAMS, as the gearman user (here, without
    # systemd, --daemon does fork: the unit's run ignores it, the notify test covers that).
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    in_root install -d -o gearman -g gearman /run/gearman
    in_root runuser -u gearman -- sh -c '. /etc/default/gearman-job-server &&
        exec /usr/sbin/gearshiftd --pid-file=/run/gearman/gearmand.pid $PARAMS \
            --port='"$port"' --verbose=INFO' ||
        fail "gearshiftd with Debian's PARAMS did not start"
    # The parent returns once the port is bound; the detached child writes the pid file.
    pidfile="$R/root/run/gearman/gearmand.pid"
    for _ in $(seq 1 100); do
        [ -s "$pidfile" ] && break
        sleep 0.05
    done
    pid=$(cat "$pidfile") || fail "no pid file /run/gearman/gearmand.pid"
    server_pid=$pid
    out=$(in_root /usr/bin/gearshift --servers "127.0.0.1:$port" version 2>&1) ||
        fail "gearshift version against the packaged server: $out"
    grep -q "1.1.20-gearshift-" <<<"$out" || fail "gearshift version: $out"
    grep -q "listening on \[127.0.0.1:$port" "$R/root/var/log/gearman-job-server/gearmand.log" ||
        fail "no 'listening on' line in /var/log/gearman-job-server/gearmand.log"
    [ "$(stat -c %U "/proc/$pid")" = gearman ] || fail "the server does not run as gearman"
    kill -USR1 "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    ! kill -0 "$pid" 2>/dev/null || fail "SIGUSR1 did not stop the server"
    server_pid=
    [ ! -e "$R/root/run/gearman/gearmand.pid" ] || fail "pid file left behind"
    ok "Debian's PARAMS as the gearman user: serves, logs to the file, stops on SIGUSR1"

    # The unit's start as systemd does it: ExecStart's command line with Debian's PARAMS, as
    # the gearman user, $NOTIFY_SOCKET naming a socket that this side reads. READY=1 must come
    # from the process started (MAINPID: --daemon ignored) once the port accepts, and SIGUSR1
    # (KillSignal) must bring STOPPING=1 and exit 0.
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 - "$R/root" "$port" <<'PY' || fail "the unit's start under \$NOTIFY_SOCKET"
import os, signal, socket, subprocess, sys
root, port = sys.argv[1], sys.argv[2]
name = "gearshift-package-test-%d" % os.getpid()
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("\0" + name)
sock.settimeout(10)
cmd = ". /etc/default/gearman-job-server && exec /usr/sbin/gearshiftd " \
      "--pid-file=/run/gearman/gearmand.pid $PARAMS --port=" + port
server = subprocess.Popen(
    ["chroot", root, "setpriv", "--reuid=gearman", "--regid=gearman", "--init-groups",
     "env", "NOTIFY_SOCKET=@" + name, "sh", "-c", cmd], stdin=subprocess.DEVNULL)
try:
    ready = sock.recv(4096).decode()
    socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
    assert ready.startswith("READY=1\n"), ready
    assert "MAINPID=%d" % server.pid in ready.split("\n"), (server.pid, ready)
    assert server.poll() is None, "the process started exited (it forked?)"
    server.send_signal(signal.SIGUSR1)
    stopping = sock.recv(4096).decode()
    assert stopping == "STOPPING=1", stopping
    assert server.wait(timeout=10) == 0
finally:
    if server.poll() is None:
        server.kill()
PY
    ok "the unit's command line under \$NOTIFY_SOCKET: READY=1 from the process started, STOPPING=1 on SIGUSR1"

    in_root dpkg -r gearshift </dev/null || fail "dpkg -r"
    [ ! -e "$R/root/usr/sbin/gearshiftd" ] || fail "gearshiftd left after dpkg -r"
    grep -q "^# an operator's edit$" "$R/root/etc/default/gearman-job-server" ||
        fail "dpkg -r did not keep the edited conffile"
    ok "dpkg -r removes the programs, keeps the conffiles"

    # Going back as the README says: apt removes gearshift for the Conflicts (done above),
    # then installs gearman-job-server, which takes the edited conffile back as is.
    cp "$gjs_deb" "$R/root/tmp/gearman-job-server.deb"
    in_root dpkg -i /tmp/gearman-job-server.deb </dev/null || fail "dpkg -i gearman-job-server"
    [ -x "$R/root/usr/sbin/gearmand" ] || fail "no /usr/sbin/gearmand after going back"
    owner=$(in_root dpkg-query -S /etc/default/gearman-job-server | cut -d: -f1)
    [ "$owner" = gearman-job-server ] || fail "/etc/default/gearman-job-server belongs to '$owner'"
    grep -q "^# an operator's edit$" "$R/root/etc/default/gearman-job-server" ||
        fail "going back lost the operator's edit"
    in_root dpkg --purge gearshift </dev/null || fail "dpkg --purge"
    [ -e "$R/root/etc/default/gearman-job-server" ] ||
        fail "purging gearshift removed gearman-job-server's conffile"
    status=$(in_root dpkg-query -W -f='${Status}' gearshift 2>/dev/null || true)
    [ -z "$status" ] || [ "${status##* }" = not-installed ] || fail "gearshift is '$status' after purge"
    ok "going back: gearmand installed, the edited conffile kept; purging gearshift leaves it"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "package-test.sh: must run as root" >&2
    exit 1
fi
command -v systemd-analyze >/dev/null || {
    echo "package-test.sh: systemd-analyze missing (Debian package systemd; scripts/install-test-deps.sh installs it)" >&2
    exit 1
}
deb=$(bash scripts/build-deb.sh "$@")
# gearman-job-server's own package, to go back to (apt's lists are refreshed if stale).
gjs=$(mktemp -d "${TMPDIR:-/tmp}/gearshift-gjs.XXXXXX")
trap 'rm -rf "$gjs"' EXIT
gjs_version=$(dpkg-query -W -f='${Version}' gearman-job-server)
fetch() { (cd "$gjs" && apt-get download -q "gearman-job-server=$gjs_version" 2>&1); }
fetch >/dev/null || { apt-get update -q >/dev/null && fetch; } || {
    echo "package-test.sh: cannot download gearman-job-server $gjs_version" >&2
    exit 1
}
echo "package-test: built $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\|Conflicts\|Replaces\|Provides\):/package-test:   \1:/p'
# The mount point is made out here, so that it can be removed once the namespace is gone.
root=$(mktemp -d "${TMPDIR:-/tmp}/gearshift-pkgroot.XXXXXX")
rc=0
unshare --mount --propagation private bash "$0" --inside "$PWD/$deb" "$root" "$gjs"/gearman-job-server_*.deb || rc=$?
rmdir "$root"
exit "$rc"
