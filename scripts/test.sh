#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine, then runs every test:
#  1. formatting and lint checks (rustfmt, clippy -D warnings), `cargo publish --dry-run` of the
#     crate, and unit tests of every crate;
#  2. the integration suite (tests/it) against gearshiftd with 1 shard, then with 4 shards on
#     epoll and again on io_uring (`--event-loop io-uring`);
#     its store module (tests/it/store: SQLite) runs in the 1-shard pass only, since it never
#     talks to the server under test (`--skip store::` leaves it out of the later passes);
#  3. the same suite against the real C gearmand, which proves it encodes gearmand's behaviour
#     rather than a guess of it;
#  4. the compatibility tests with real clients (libgearman's gearman/gearadmin, Perl, Python),
#     and TLS with Python gear and openssl s_client over mutual TLS (tests/it/tls.rs: part of
#     the integration suite, with certificates made by the tests);
#  5. bursts far larger than a ring between shards (tests/it/backpressure.rs), against a release
#     build at 4 and 8 shards (on epoll and on io_uring), and against gearmand;
#  6. the queue stores (PostgreSQL, MariaDB, redis) on real servers started here, and interop
#     with gearmand's stores (SQLite's too): the store module's ignored tests, run with
#     `--ignored store::`, where a missing server fails; the kill -9 crash tests on every store
#     (tests/it/durable.rs) run in the integration passes;
#  7. the Debian package: built, installed over gearman-job-server in a throwaway overlay of
#     this machine (scripts/package-test.sh: gearmand stays installed here), its unit checked
#     with systemd-analyze verify;
#  8. a short pass of each fuzz target (scripts/fuzz.sh; the long runs are in RELIABILITY.md).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

# Throwaway PostgreSQL, MariaDB and redis servers on loopback for the queue-store tests.
eval "$(bash scripts/start-test-stores.sh)"
trap 'bash scripts/start-test-stores.sh stop "$GEARSHIFT_TEST_STORES_DIR" >/dev/null 2>&1 || true' EXIT

# Every compatibility test must find its client: a missing tool fails instead of skipping.
export GEARSHIFT_REQUIRE_COMPAT=1
export GEARSHIFTD_BIN="$PWD/target/debug/gearshiftd"

cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The client library alone (default-features = false): no server, stores or database drivers.
cargo clippy --no-default-features --lib -- -D warnings
# Crate docs without warnings, whole and client-only.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --no-default-features
cargo build --workspace --all-targets
cargo bench --workspace --no-run
# The crate as crates.io would take it: metadata, the files it ships, and a build from them.
cargo publish --dry-run --allow-dirty -p gearshift

echo "== unit tests, integration suite (SQLite store tests included) and loadtest smoke test, 1 shard"
GEARSHIFT_TEST_THREADS=1 cargo test --workspace -- --test-threads=2

echo "== queue stores on PostgreSQL, MariaDB and redis, interop with gearmand's stores, and kill -9 crash tests on them"
cargo test --test it -- --ignored store:: durable:: --test-threads=2
GEARSHIFT_TEST_THREADS=4 cargo test --test it -- --ignored durable:: --test-threads=2
GEARSHIFT_TEST_SERVER=gearmand cargo test --test it -- --ignored durable:: --test-threads=2

echo "== integration suite, 4 shards (the store module ran above: it has no server under test)"
GEARSHIFT_TEST_THREADS=4 cargo test --test it -- --skip store:: --test-threads=2

echo "== integration suite, 4 shards on io_uring (--event-loop io-uring)"
GEARSHIFT_TEST_EVENT_LOOP=io-uring GEARSHIFT_TEST_THREADS=4 cargo test --test it -- --skip store:: --test-threads=2

echo "== the same suite against the real gearmand (gearshiftd's deliberate differences are guarded)"
GEARSHIFT_TEST_SERVER=gearmand cargo test --test it -- --skip store:: --test-threads=2

echo "== bursts far larger than a ring between shards, 4 and 8 shards (release build), and gearmand"
cargo build --release --bin gearshiftd
GEARSHIFTD_BIN="$PWD/target/release/gearshiftd" cargo test --test it backpressure -- --ignored --test-threads=1
GEARSHIFT_TEST_EVENT_LOOP=io-uring GEARSHIFTD_BIN="$PWD/target/release/gearshiftd" cargo test --test it backpressure -- --ignored --test-threads=1
GEARSHIFT_TEST_SERVER=gearmand cargo test --test it backpressure -- --ignored --test-threads=1

echo "== the Debian package: dpkg -i over gearman-job-server in an overlay, systemd-analyze verify, dpkg -r"
bash scripts/package-test.sh

echo "== fuzz targets, a short pass from the checked-in seeds (regression inputs included)"
bash scripts/fuzz.sh 20 decode admin_line http
bash scripts/fuzz.sh 40 server
