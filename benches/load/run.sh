#!/usr/bin/env bash
# The side-by-side load benchmark: signpost, NSD, Knot and dnsmasq serve the
# same 1,000 services x 5 instances on loopback, each pinned to core 0 with
# dnsperf on core 1 (bench.py, which generates the data and the peers'
# configs and installs what is missing); then a TCP run against signpost,
# and ratios of signpost to each peer. Needs nothing outside this repository.
#
#   benches/load/run.sh                      # one rotation, all four servers
#   RUNS=3 SERVERS=nsd,knot,signpost benches/load/run.sh
#   benches/load/run.sh --duration 5 --rate 0   # extra arguments go to bench.py (-h)
#
# Loopback only (127.0.0.1, ports 5301-5304 and 5399).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
workdir=${WORKDIR:-/tmp/bench_work/signpost-$(date +%Y%m%d-%H%M%S)}

cargo build --release --manifest-path "$root/Cargo.toml" --bin signpost
bin="$root/target/release/signpost"
python3 "$here/bench.py" --runs "${RUNS:-1}" --servers "${SERVERS:-nsd,knot,dnsmasq,signpost}" \
  --signpost "$bin" --workdir "$workdir" "$@"

# TCP with connection reuse (each dnsperf client keeps one connection),
# against UDP under the same settings, signpost alone on core 0.
port=5399
taskset -c 0 "$bin" --config "$here/signpost.toml" --dns 127.0.0.1:$port --http 127.0.0.1:0 --zones "$workdir/data/defs" \
  --node bench --log-level warn &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  dig @127.0.0.1 -p $port +short +time=1 s0.service.consul A >/dev/null 2>&1 && break
  sleep 0.2
done
for mode in udp tcp; do
  taskset -c 1 dnsperf -m "$mode" -s 127.0.0.1 -p $port -d "$workdir/data/queries.txt" \
    -c 4 -T 1 -q 100 -t 2 -l "${TCP_SECONDS:-10}" > "$workdir/signpost-$mode.txt" 2>&1 || true
  echo "signpost $mode: $(grep 'Queries per second' "$workdir/signpost-$mode.txt" | awk '{print $4}') qps"
done
kill $pid 2>/dev/null || true

python3 "$here/ratios.py" "$workdir" | tee "$workdir/ratios.md"
