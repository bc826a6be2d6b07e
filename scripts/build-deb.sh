#!/usr/bin/env bash
# Builds the Debian package of gearshift with dpkg-deb alone (no cargo-deb, no debhelper):
#   target/debian/gearshift_<version>-1_<arch>.deb
# It installs /usr/sbin/gearshiftd, /usr/bin/gearshift, the unit gearman-job-server.service
# (an alias gearshiftd.service), /etc/default/gearman-job-server and
# /etc/logrotate.d/gearman-job-server (both byte for byte Debian's gearman-job-server's, so
# that dpkg takes them over unchanged when the package replaces gearmand's), and the docs.
# It Conflicts with, Replaces and Provides gearman-job-server: installing it removes gearmand.
#
# Usage: scripts/build-deb.sh [--no-build]   (--no-build packs target/release as it is)
#        DEB_MAINTAINER="Name <address>" sets the package's Maintainer field.
# Prints the path of the package on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != "--no-build" ]; then
    cargo build --release --bin gearshiftd --bin gearshift >&2
fi

# Version and homepage from Cargo.toml; the maintainer from $DEB_MAINTAINER.
meta() {
    cargo metadata --no-deps --format-version 1 |
        python3 -c 'import json,sys; print(next(p[sys.argv[1]] for p in json.load(sys.stdin)["packages"] if p["name"] == "gearshift"))' "$1"
}
homepage=$(meta repository)
maintainer=${DEB_MAINTAINER:-gearshift maintainers <maintainers@gearshift.invalid>}
arch=$(dpkg --print-architecture)
deb_version="$(meta version)-1"
out=target/debian
stage=$(mktemp -d "${TMPDIR:-/tmp}/gearshift-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage"
src=packaging/debian

install -d "$stage/DEBIAN" "$stage/usr/sbin" "$stage/usr/bin" \
    "$stage/lib/systemd/system" "$stage/etc/default" "$stage/etc/logrotate.d" \
    "$stage/usr/share/doc/gearshift" "$stage/var/log/gearman-job-server"
# The release profile keeps line tables for profiling; the package does without them.
install -m 755 target/release/gearshiftd "$stage/usr/sbin/gearshiftd"
install -m 755 target/release/gearshift "$stage/usr/bin/gearshift"
strip --strip-debug "$stage/usr/sbin/gearshiftd" "$stage/usr/bin/gearshift"
install -m 644 "$src/gearman-job-server.service" "$stage/lib/systemd/system/"
install -m 644 "$src/default" "$stage/etc/default/gearman-job-server"
install -m 644 "$src/logrotate" "$stage/etc/logrotate.d/gearman-job-server"
install -m 644 README.md CHANGELOG.md "$stage/usr/share/doc/gearshift/"
install -m 644 packaging/grafana/gearshiftd.json "$stage/usr/share/doc/gearshift/grafana-dashboard.json"
{
    echo "gearshift is dual-licensed: MIT OR Apache-2.0, at your option."
    echo
    echo "=== MIT ==="
    cat LICENSE-MIT
    echo
    echo "=== Apache-2.0 ==="
    cat LICENSE-APACHE
} >"$stage/usr/share/doc/gearshift/copyright"
chmod 644 "$stage/usr/share/doc/gearshift/copyright"
install -m 755 "$src/postinst" "$src/prerm" "$src/postrm" "$stage/DEBIAN/"
printf '/etc/default/gearman-job-server\n/etc/logrotate.d/gearman-job-server\n' >"$stage/DEBIAN/conffiles"

# The C library version: the newest GLIBC_x.y symbol version the binaries use.
glibc=$(objdump -T "$stage/usr/sbin/gearshiftd" "$stage/usr/bin/gearshift" |
    grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: gearshift
Version: $deb_version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: libc6 (>= $glibc), libgcc-s1, adduser
Conflicts: gearman-job-server
Replaces: gearman-job-server
Provides: gearman-job-server
Section: misc
Priority: optional
Homepage: $homepage
Description: Gearman job server, a drop-in for gearmand 1.1
 gearshiftd speaks gearmand 1.1's binary and admin protocols byte for byte and
 accepts its flags; this package takes the place of gearman-job-server: the
 unit gearman-job-server.service (Type=notify) reads the same
 /etc/default/gearman-job-server and runs as the same gearman user. It also
 installs the gearshift command-line client, worker and admin tool.
CONTROL

mkdir -p "$out"
deb="$out/gearshift_${deb_version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >&2
echo "$deb"
