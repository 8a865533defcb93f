#!/usr/bin/env bash
# Resident memory of the real signpost binary holding 100,000 instances
# (20,000 services x 5, two tags each, one node per instance), loaded from a
# catalog-shape definition file, then (API=N) with N more registered over
# HTTP into a --data-dir store. Loopback only.
#
#   benches/memory-binary.sh
#   API=10000 benches/memory-binary.sh
#   SERVICES=0 API=100000 benches/memory-binary.sh   # all through the API
#   SERVICES=0 AGENT=100000 benches/memory-binary.sh # agent API, no checks
#   SERVICES=0 AGENT=100000 TTL=1 benches/memory-binary.sh  # a TTL check each
#   SERVICES=100000 PER=10 PER_NODE=10 benches/memory-binary.sh  # issue 29's million
#   SERVICES=0 API=1000000 PER=10 PER_NODE=10 benches/memory-binary.sh  # the same over HTTP
#   DATA=/tmp/store SERVICES=0 API=1000000 PER=10 PER_NODE=10 benches/memory-binary.sh
#   DATA=/tmp/store SERVICES=0 benches/memory-binary.sh   # restart from that store alone
#
# PER: instances per service (5); PER_NODE: instances per node (1). API
# registrations go over CONNS connections at once (16), so that the store's
# committer batches them as it does for a fleet of clients.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
services=${SERVICES:-20000}
per=${PER:-5}
per_node=${PER_NODE:-1}

cargo build --release --manifest-path "$root/Cargo.toml" --bin signpost
# DATA: a store directory kept after the run (and restored from when it
# already holds one), so a restart can be measured again without
# registering everything anew.
data=${DATA:-$work/data}
mkdir -p "$work/zones" "$data"
python3 - "$services" "$per" "$per_node" > "$work/zones/all.json" <<'EOF'
import json, sys
services, per, per_node = map(int, sys.argv[1:4])
out = []
for s in range(services):
    for i in range(per):
        n = (s * per + i) // per_node + 1
        out.append({
            "Node": f"n{n}",
            "Address": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{max(n & 255, 1)}",
            "Service": {"ID": f"s{s}-{i}", "Service": f"s{s}", "Tags": ["v1", "primary"], "Port": 8080},
        })
json.dump(out, sys.stdout)
EOF

"$root/target/release/signpost" --dns 127.0.0.1:0 --http 127.0.0.1:0 --zones "$work/zones" \
  --data-dir "$data" --node bench --log-level info > "$work/log" 2>&1 &
pid=$!
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$pid/status"; }
hwm() { awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$pid/status"; }
# The HTTP address is logged at startup; the zones are loaded before it is.
for _ in $(seq 300); do
  http=$(grep -o 'serving HTTP on [0-9.:]*' "$work/log" | grep -o '[0-9.]*:[0-9]*$' || true)
  [ -n "$http" ] && break
  sleep 0.1
done
[ -n "$http" ] || { cat "$work/log"; echo "signpost did not start"; exit 1; }
count=$(curl -s "http://$http/v1/catalog/services" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
# The allocator hands back the parse's peak over a few seconds.
sleep 8
echo "$services x $per instances, $per_node a node, from a definition file, and the store ($count services): RSS $(rss), peak $(hwm)"

if [ "${AGENT:-0}" -gt 0 ]; then
  # Through the agent API, as most deployments register, each with a TTL
  # check when TTL=1 (the health runner then holds a clock for each).
  python3 - "$http" "$AGENT" "${TTL:-0}" <<'EOF'
import http.client, json, sys
host, port = sys.argv[1].rsplit(":", 1)
ttl = sys.argv[3] == "1"
conn = http.client.HTTPConnection(host, int(port))
for k in range(int(sys.argv[2])):
    body = {"ID": f"a{k}", "Name": f"api{k // 5}", "Tags": ["v1", "primary"], "Port": 80}
    if ttl:
        body["Check"] = {"TTL": "30m"}
    conn.request("PUT", "/v1/agent/service/register", json.dumps(body))
    r = conn.getresponse()
    r.read()
    assert r.status == 200, r.status
EOF
  sleep 3
  with=$([ "${TTL:-0}" = 1 ] && echo ", a TTL check each" || true)
  echo "and $AGENT registered through the agent API into the store$with: RSS $(rss)"
fi

if [ "${API:-0}" -gt 0 ]; then
  started=$(date +%s)
  python3 - "$http" "$API" "$per" "$per_node" "${CONNS:-16}" <<'EOF'
import http.client, json, sys, threading
host, port = sys.argv[1].rsplit(":", 1)
total, per, per_node, conns = map(int, sys.argv[2:6])
def run(first):
    conn = http.client.HTTPConnection(host, int(port))
    for k in range(first, total, conns):
        n = k // per_node
        address = f"10.{200 + (n >> 16 & 31)}.{n >> 8 & 255}.{max(n & 255, 1)}"
        body = json.dumps({"Node": f"api{n}", "Address": address,
                           "Service": {"ID": f"a{k}", "Service": f"api{k // per}",
                                       "Tags": ["v1", "primary"], "Port": 80}})
        conn.request("PUT", "/v1/catalog/register", body)
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=run, args=(c,)) for c in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
EOF
  echo "and $API more registered over HTTP into the store in $(( $(date +%s) - started )) s: RSS $(rss)"
  # Restart on the same store: everything comes back from it.
  kill $pid; wait $pid 2>/dev/null || true
  : > "$work/log"
  "$root/target/release/signpost" --dns 127.0.0.1:0 --http 127.0.0.1:0 --zones "$work/zones" \
    --data-dir "$data" --node bench --log-level info > "$work/log" 2>&1 &
  pid=$!
  started=$(date +%s)
  for _ in $(seq 3000); do
    grep -q 'serving HTTP on' "$work/log" && break
    sleep 0.1
  done
  http=$(grep -o 'serving HTTP on [0-9.:]*' "$work/log" | grep -o '[0-9.]*:[0-9]*$')
  back=$(curl -s "http://$http/v1/catalog/services" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
  restored=$(( $(date +%s) - started ))
  sleep 8
  echo "after a restart that restores them from the store ($back services back in $restored s, store $(du -sh "$data" | cut -f1)): RSS $(rss), peak $(hwm)"
fi
