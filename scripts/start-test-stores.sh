#!/usr/bin/env bash
# Starts throwaway queue-store servers on loopback for the store tests (tests/it/store/):
# PostgreSQL, MariaDB and redis, each in its own directory under one temporary folder, each on a
# free port of 127.0.0.1. Nothing is installed and nothing system-wide is touched: run
# scripts/install-test-deps.sh first for the server packages.
#
#   eval "$(scripts/start-test-stores.sh)"       # start; exports the variables below
#   cargo test --test it -- --ignored store::     # the store tests that need these servers
#   scripts/start-test-stores.sh stop             # stop them all and remove the folder
#
#   scripts/start-test-stores.sh postgres mariadb # start only these (postgres, mariadb, redis)
#
# On stdout it prints only `export` lines, for eval:
#   GEARSHIFT_TEST_PG="host=127.0.0.1 port=P user=gearshift password=... dbname=gearshift"
#                                             (a libpq conninfo, as --libpq-conninfo takes)
#   GEARSHIFT_TEST_MYSQL=127.0.0.1:P:gearshift:PASSWORD:gearshift   (host:port:user:password:db)
#   GEARSHIFT_TEST_REDIS=127.0.0.1:P          (no password; appendonly, appendfsync always)
#   GEARSHIFT_TEST_STORES_DIR=/tmp/gearshift-stores.XXXXXX   (what `stop` removes)
# Progress and errors go to stderr. A server that is not installed or fails to start is reported
# and its variable is left out: its store tests and the crash tests of tests/it/durable.rs
# (ignored unless asked for) then fail.
# Servers run as unprivileged users when started by root (postgres refuses root).
#
# Stop: `scripts/start-test-stores.sh stop [DIR]`, DIR defaulting to $GEARSHIFT_TEST_STORES_DIR.
# Only the processes whose pid files are in DIR are signalled.
#
# Crash tests (tests/it/durable.rs) take a server down and bring it back, on servers of their own:
#   scripts/start-test-stores.sh signal DIR STORE SIG   # kill -SIG every process of the server
#                                                     # (postgres: the postmaster and its children)
#   scripts/start-test-stores.sh restart DIR STORE      # start it again: same data, same port
# STORE is postgres or mariadb.
set -uo pipefail

log() { echo "start-test-stores: $*" >&2; }

stop_dir() {
    local dir=$1
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        log "nothing to stop (no folder '$dir')"
        return 0
    fi
    if [ ! -e "$dir/.gearshift-stores" ]; then
        log "$dir was not made by this script; not touching it"
        return 1
    fi
    # PostgreSQL: its own shutdown (fast mode) so it removes its socket and lock.
    if [ -s "$dir/pg/data/postmaster.pid" ]; then
        as_user postgres "$PG_BIN/pg_ctl" -D "$dir/pg/data" -m fast -w -t 20 stop >/dev/null 2>&1 || true
    fi
    local pidfile pid
    for pidfile in "$dir/mysql/mysqld.pid" "$dir/redis/redis.pid"; do
        [ -s "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        [ -n "$pid" ] || continue
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$dir"
    log "stopped and removed $dir"
}

# Runs a command as USER when we are root, as ourselves otherwise.
as_user() {
    local user=$1
    shift
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "$user" -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for_port() { # port seconds
    local port=$1 tries=$(( $2 * 10 ))
    for _ in $(seq 1 "$tries"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

# The processes of a server started here: postgres's postmaster and its children, mariadbd.
server_pids() { # dir store
    local dir=$1 pid
    case $2 in
        postgres)
            pid=$(head -1 "$dir/pg/data/postmaster.pid" 2>/dev/null) || return 1
            [ -n "$pid" ] || return 1
            echo "$pid" $(ps -o pid= --ppid "$pid")
            ;;
        mariadb)
            pid=$(cat "$dir/mysql/mysqld.pid" 2>/dev/null) || return 1
            [ -n "$pid" ] && echo "$pid"
            ;;
        *) log "unknown store '$2' (postgres or mariadb)"; return 1 ;;
    esac
}

if [ "${1:-}" = "stop" ]; then
    stop_dir "${2:-${GEARSHIFT_TEST_STORES_DIR:-}}"
    exit $?
fi

if [ "${1:-}" = "signal" ] || [ "${1:-}" = "restart" ]; then
    dir=${2:-}
    store=${3:-}
    if [ -z "$dir" ] || [ ! -e "$dir/.gearshift-stores" ]; then
        log "$1: '$dir' was not made by this script"
        exit 1
    fi
    if [ "$1" = "signal" ]; then
        pids=$(server_pids "$dir" "$store") || { log "signal: no $store running in $dir"; exit 1; }
        kill -"${4:?signal: which signal?}" $pids
        exit $?
    fi
    [ -x "$dir/$store.restart" ] || { log "restart: no $store in $dir"; exit 1; }
    # A killed server's processes must be gone (reaped, too: postgres reads a pid that still
    # exists, zombie or not, as a server still running) before it can start again.
    if pids=$(server_pids "$dir" "$store"); then
        for _ in $(seq 1 300); do
            alive=""
            for pid in $pids; do
                kill -0 "$pid" 2>/dev/null && alive=1
            done
            [ -z "$alive" ] && break
            sleep 0.1
        done
    fi
    "$dir/$store.restart"
    exit $?
fi

BASE=$(mktemp -d /tmp/gearshift-stores.XXXXXX)
chmod 755 "$BASE"
touch "$BASE/.gearshift-stores"
echo "export GEARSHIFT_TEST_STORES_DIR=$BASE"

# Which stores to start: the arguments, or all three.
WANT=" ${*:-postgres mariadb redis} "
wanted() { [[ $WANT == *" $1 "* ]]; }

# --- PostgreSQL ---------------------------------------------------------------------------

start_postgres() {
    local user=postgres
    if [ ! -x "$PG_BIN/initdb" ]; then
        log "postgres: $PG_BIN/initdb not found (apt-get install postgresql); skipped"
        return 1
    fi
    if [ "$(id -u)" -eq 0 ] && ! id "$user" >/dev/null 2>&1; then
        log "postgres: no '$user' account to run it as; skipped"
        return 1
    fi
    local dir="$BASE/pg" port password=gs-pg-secret
    mkdir -p "$dir"
    echo "$password" > "$dir/pwfile"
    [ "$(id -u)" -eq 0 ] && chown -R "$user" "$dir"
    port=$(free_port)
    if ! as_user "$user" "$PG_BIN/initdb" -D "$dir/data" -U gearshift --pwfile="$dir/pwfile" \
        -A scram-sha-256 --no-sync -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1; then
        log "postgres: initdb failed, see $dir/initdb.log"
        return 1
    fi
    # The start command, kept so that a crash test can start the server again after killing it.
    local runas=""
    [ "$(id -u)" -eq 0 ] && runas="runuser -u $user --"
    cat > "$BASE/postgres.restart" <<RESTART
#!/usr/bin/env bash
cd /
exec $runas "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \\
    -o "-h 127.0.0.1 -p $port -k $dir -c max_connections=40 -c shared_buffers=16MB" \\
    start >/dev/null 2>&1
RESTART
    chmod +x "$BASE/postgres.restart"
    if ! "$BASE/postgres.restart"; then
        log "postgres: did not start, see $dir/server.log"
        return 1
    fi
    if ! PGPASSWORD=$password as_user "$user" env PGPASSWORD=$password "$PG_BIN/createdb" \
        -h 127.0.0.1 -p "$port" -U gearshift gearshift >>"$dir/initdb.log" 2>&1; then
        log "postgres: createdb failed, see $dir/initdb.log"
        return 1
    fi
    echo "export GEARSHIFT_TEST_PG='host=127.0.0.1 port=$port user=gearshift password=$password dbname=gearshift'"
    log "postgres on 127.0.0.1:$port"
}

# --- MariaDB ------------------------------------------------------------------------------

start_mariadb() {
    local install server
    install=$(command -v mariadb-install-db || command -v mysql_install_db || true)
    server=$(command -v mariadbd || command -v mysqld || true)
    [ -z "$server" ] && [ -x /usr/sbin/mariadbd ] && server=/usr/sbin/mariadbd
    [ -z "$server" ] && [ -x /usr/sbin/mysqld ] && server=/usr/sbin/mysqld
    if [ -z "$install" ] || [ -z "$server" ]; then
        log "mariadb: mariadb-install-db or mariadbd not found (apt-get install mariadb-server); skipped"
        return 1
    fi
    local dir="$BASE/mysql" port user password=gs-my-secret
    user=$(id -un)
    mkdir -p "$dir"
    port=$(free_port)
    # Small redo log and buffer pool: the throwaway server starts in a second or two.
    local common=(--no-defaults --datadir="$dir/data" --user="$user"
        --innodb-log-file-size=8M --innodb-buffer-pool-size=16M --skip-name-resolve)
    if ! "$install" "${common[@]}" --auth-root-authentication-method=normal --skip-test-db \
        >"$dir/install.log" 2>&1; then
        log "mariadb: $install failed, see $dir/install.log"
        return 1
    fi
    # The start command, kept so that a crash test can start the server again after killing it.
    cat > "$BASE/mariadb.restart" <<RESTART
#!/usr/bin/env bash
$(declare -f wait_for_port)
cd /
$(printf '%q ' "$server" "${common[@]}") --bind-address=127.0.0.1 --port=$port \\
    --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" --log-error="$dir/server.log" \\
    --skip-log-bin --innodb-flush-log-at-trx-commit=1 </dev/null >/dev/null 2>&1 &
wait_for_port $port 60
RESTART
    chmod +x "$BASE/mariadb.restart"
    if ! "$BASE/mariadb.restart"; then
        log "mariadb: did not start, see $dir/server.log"
        return 1
    fi
    local client
    client=$(command -v mariadb || command -v mysql || true)
    if [ -z "$client" ] || ! "$client" --no-defaults --socket="$dir/mysqld.sock" -uroot >"$dir/setup.log" 2>&1 <<SQL
CREATE DATABASE gearshift;
CREATE USER 'gearshift'@'%' IDENTIFIED BY '$password';
GRANT ALL ON gearshift.* TO 'gearshift'@'%';
CREATE USER 'gearshift'@'localhost' IDENTIFIED BY '$password';
GRANT ALL ON gearshift.* TO 'gearshift'@'localhost';
FLUSH PRIVILEGES;
SQL
    then
        log "mariadb: creating the test user failed, see $dir/setup.log"
        return 1
    fi
    echo "export GEARSHIFT_TEST_MYSQL=127.0.0.1:$port:gearshift:$password:gearshift"
    log "mariadb on 127.0.0.1:$port"
}

# --- redis --------------------------------------------------------------------------------

start_redis() {
    local server
    server=$(command -v redis-server || true)
    if [ -z "$server" ]; then
        log "redis: redis-server not found (apt-get install redis-server); skipped"
        return 1
    fi
    local dir="$BASE/redis" port
    mkdir -p "$dir"
    port=$(free_port)
    # appendfsync always: every write is fsynced before the reply, the setting under which the
    # redis store's "durable" means what it says (see src/store/redis.rs).
    if ! "$server" --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly yes \
        --appendfsync always --daemonize yes --pidfile "$dir/redis.pid" \
        --logfile "$dir/server.log" >/dev/null 2>&1 || ! wait_for_port "$port" 10; then
        log "redis: did not start, see $dir/server.log"
        return 1
    fi
    echo "export GEARSHIFT_TEST_REDIS=127.0.0.1:$port"
    log "redis on 127.0.0.1:$port"
}

# They start side by side; each prints its own export line when it is up.
: >"$BASE/pg.env"
: >"$BASE/mysql.env"
: >"$BASE/redis.env"
if wanted postgres; then start_postgres >"$BASE/pg.env" & fi
if wanted mariadb; then start_mariadb >"$BASE/mysql.env" & fi
if wanted redis; then start_redis >"$BASE/redis.env" & fi
wait
cat "$BASE/pg.env" "$BASE/mysql.env" "$BASE/redis.env"
