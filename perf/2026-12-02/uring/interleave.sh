#!/bin/bash
# Interleaved rounds: gearshiftd on epoll, on io_uring, and gearmand, plus the harness's echo
# ceiling on epoll and on io_uring (--echo-io-uring); one loadtest round each per turn, every server fresh and -t1 unless THREADS says.
# usage: BIN=… interleave.sh SCENARIO ROUNDS LOADTEST_ARGS...
set -u
SCEN=$1; ROUNDS=$2; shift 2
L=${L:-target/release/loadtest}
BIN=${BIN:?the gearshiftd binary}
THREADS=${THREADS:-1}
TARGETS=${TARGETS:-epoll uring gearmand ceiling ceiling-uring}
D=$(mktemp -d)
start_gs() { # extra...
  "$BIN" --listen=127.0.0.1 --port=0 --threads=$THREADS --log-file=none --pid-file=$D/pid "$@" > $D/out 2>&1 &
  SPID=$!
  for i in $(seq 100); do grep -q "^listening on" $D/out && break; sleep 0.05; done
  ADDR=$(grep "^listening on" $D/out | sed 's/listening on //')
}
start_gm() {
  PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  /usr/sbin/gearmand --listen=127.0.0.1 --port=$PORT --threads=$THREADS --log-file=none --pid-file=$D/gmpid > $D/out 2>&1 &
  SPID=$!
  for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
  ADDR=127.0.0.1:$PORT
}
for r in $(seq $ROUNDS); do
  for t in $TARGETS; do
    if [ $t = ceiling ] || [ $t = ceiling-uring ]; then
      flag=; [ $t = ceiling-uring ] && flag=--echo-io-uring
      line=$($L ceiling --jobs 300000 --clients 8 --depth 1 --rounds 1 $flag 2>&1 | grep "^result:")
      echo "target=$t round=$r $line"
      continue
    fi
    case $t in
      epoll) start_gs --event-loop=epoll ;;
      uring) start_gs --event-loop=io-uring ;;
      gearmand) start_gm ;;
    esac
    line=$($L $SCEN --addr $ADDR --server-pid $SPID --rounds 1 "$@" 2>&1 | grep "^result:")
    echo "target=$t round=$r $line"
    kill $SPID; wait $SPID 2>/dev/null
  done
done
