#!/bin/bash
# Interleaved rounds: main's gearshiftd, this branch without and with metrics (scraped every
# second), and gearmand; one loadtest round each per turn.
# usage: BASE=… NEW=… interleave.sh SCENARIO ROUNDS LOADTEST_ARGS...
set -u
SCEN=$1; ROUNDS=$2; shift 2
L=${L:-target/release/loadtest}
BASE=${BASE:?the gearshiftd binary of the base commit}
NEW=${NEW:?the gearshiftd binary of the branch}
D=$(mktemp -d)
start_gs() { # bin extra...
  local bin=$1; shift
  "$bin" --listen=127.0.0.1 --port=0 --threads=1 --log-file=none --pid-file=$D/pid "$@" > $D/out 2>&1 &
  SPID=$!
  for i in $(seq 100); do grep -q "^listening on" $D/out && break; sleep 0.05; done
  ADDR=$(grep "^listening on" $D/out | sed 's/listening on //')
  MADDR=$(grep "^listening for metrics on" $D/out | sed 's/listening for metrics on //')
}
start_gm() {
  PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  /usr/sbin/gearmand --listen=127.0.0.1 --port=$PORT --threads=1 --log-file=none --pid-file=$D/gmpid > $D/out 2>&1 &
  SPID=$!
  for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
  ADDR=127.0.0.1:$PORT; MADDR=
}
for r in $(seq $ROUNDS); do
  for t in base off on gearmand; do
    case $t in
      base) start_gs $BASE ;;
      off) start_gs $NEW ;;
      on) start_gs $NEW --metrics-port=0 ;;
      gearmand) start_gm ;;
    esac
    SCRAPER=
    if [ -n "$MADDR" ]; then
      (while true; do curl -s http://$MADDR/metrics > /dev/null; sleep 1; done) &
      SCRAPER=$!
    fi
    line=$($L $SCEN --addr $ADDR --server-pid $SPID --rounds 1 "$@" 2>&1 | grep "^result:")
    echo "target=$t round=$r $line"
    [ -n "$SCRAPER" ] && kill $SCRAPER
    kill $SPID; wait $SPID 2>/dev/null
  done
done
