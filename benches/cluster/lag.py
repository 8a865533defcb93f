#!/usr/bin/env python3
"""Cluster mode: how long a write through one member takes, and how long
until the other members show it.

Starts three etcd members and three signposts on loopback ports (nothing
else), then N times: registers an instance through member 1 (timing the
acknowledged PUT) and polls members 2 and 3 over HTTP until the instance
is there (timing write start -> visible). Reports p50/p90/p99/max.

    python3 benches/cluster/lag.py target/release/signpost [N]

Needs `etcd` (Debian: etcd-server). Every process it starts is stopped at
the end; every loop is bounded.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def put(url, body):
    req = urllib.request.Request(url, data=body.encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=15) as r:
        return r.status


def wait(what, probe, limit=30):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"not within {limit} s: {what}")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def main():
    binary = os.path.abspath(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    if not shutil.which("etcd"):
        sys.exit("etcd is missing: apt-get install etcd-server")
    work = tempfile.mkdtemp(prefix="signpost-cluster-lag-")
    procs = []
    try:
        clients = [free_port() for _ in range(3)]
        peers = [free_port() for _ in range(3)]
        initial = ",".join(f"e{i}=http://127.0.0.1:{peers[i]}" for i in range(3))
        for i in range(3):
            c = f"http://127.0.0.1:{clients[i]}"
            p = f"http://127.0.0.1:{peers[i]}"
            procs.append(subprocess.Popen(
                ["etcd", "--name", f"e{i}", "--data-dir", f"{work}/e{i}",
                 "--listen-client-urls", c, "--advertise-client-urls", c,
                 "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                 "--initial-cluster", initial, "--log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls = ",".join(f"http://127.0.0.1:{c}" for c in clients)
        http = [free_port() for _ in range(3)]
        for i in range(3):
            procs.append(subprocess.Popen(
                [binary, "--etcd", urls, "--node", f"host{i + 1}",
                 "--dns", f"127.0.0.1:{free_port()}",
                 "--http", f"127.0.0.1:{http[i]}", "--log-level", "warn"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for h in http:
            wait("members ready", lambda h=h: get(f"http://127.0.0.1:{h}/ready")[0] == 200)
        acked, visible = [], []
        for n in range(rounds):
            body = json.dumps({"ID": f"lag{n}", "Name": f"lag{n}",
                               "Address": "10.9.0.1", "Port": 80})
            start = time.monotonic()
            status = put(f"http://127.0.0.1:{http[0]}/v1/agent/service/register", body)
            acked.append(time.monotonic() - start)
            assert status == 200
            for h in http[1:]:
                url = f"http://127.0.0.1:{h}/v1/catalog/service/lag{n}"
                end = start + 10
                while json.loads(get(url)[1]) == []:
                    if time.monotonic() > end:
                        sys.exit(f"lag{n} not on the other members within 10 s")
            visible.append(time.monotonic() - start)
        ms = lambda x: f"{x * 1000:.1f} ms"
        for name, xs in [("write acknowledged (PUT through member 1)", acked),
                         ("write start -> visible on members 2 and 3", visible)]:
            print(f"{name}: p50 {ms(pct(xs, 50))}, p90 {ms(pct(xs, 90))}, "
                  f"p99 {ms(pct(xs, 99))}, max {ms(max(xs))} ({len(xs)} writes)")
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
