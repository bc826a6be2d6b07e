#!/bin/bash
# The io_uring comparison: fg 16x8, fg 16x1 and bg 4x32, ROUNDS interleaved rounds each
# (epoll, io_uring, gearmand and the echo ceiling in every round).
# usage: BIN=target/release/gearshiftd run.sh ROUNDS
set -u
R=${1:-3}
H=$(dirname "$0")
echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) threads ${THREADS:-1}"
for s in "fg --jobs 200000 --payload 64 --clients 16 --depth 8 --workers 8" \
         "fg --jobs 200000 --payload 64 --clients 16 --depth 1 --workers 8" \
         "bg --jobs 200000 --payload 64 --clients 4 --depth 32 --workers 8"; do
  echo "## $s"
  set -- $s
  scen=$1; shift
  "$H/interleave.sh" "$scen" "$R" "$@"
done
