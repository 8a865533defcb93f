#!/usr/bin/env python3
"""Cluster mode: write latency and throughput, change -> other members,
and DNS QPS per member against a standalone signpost.

Starts three etcd members and three signposts on loopback ports (nothing
else), then:

1. N times: registers an instance through member 1 (timing the
   acknowledged PUT) and polls members 2 and 3 over HTTP until the instance
   is there (timing write start -> visible). Reports p50/p90/p99/max.
2. Concurrent writers (WRITERS threads, keep-alive connections) for
   SECONDS, first all through member 1, then spread over the three members:
   writes/s and acknowledged-write p50/p99.
3. dnsperf (when installed) against each member and against a standalone
   signpost holding the same services: queries/s of each, same run.

    python3 benches/cluster/lag.py target/release/signpost [N] [WRITERS] [SECONDS]

Needs `etcd` (Debian: etcd-server); step 3 needs `dnsperf`. Every process it
starts is stopped at the end; every loop is bounded.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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


class Conn:
    """A keep-alive HTTP/1.1 connection that sends each request in one
    segment with TCP_NODELAY. (http.client sends headers and body apart,
    and Nagle plus delayed ACKs then add milliseconds to every request:
    the client, not the server, would be measured.)"""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def put(self, path, body):
        body = body.encode()
        self.sock.sendall(b"PUT %s HTTP/1.1\r\nHost: signpost\r\nContent-Length: %d\r\n\r\n%s"
                          % (path.encode(), len(body), body))
        while b"\r\n\r\n" not in self.buf:
            self.recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            self.recv()
        self.buf = self.buf[length:]
        return status

    def recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise OSError("the server closed the connection")
        self.buf += data

    def close(self):
        self.sock.close()


def write_load(ports, writers, seconds, tag):
    """WRITERS threads, each on a keep-alive connection to one of PORTS in
    turn, register new services until SECONDS pass. Returns (writes/s,
    latencies, failures)."""
    lat, failed = [], []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def run(w):
        conn = Conn(ports[w % len(ports)])
        mine, bad, n = [], 0, 0
        while time.monotonic() < end:
            body = json.dumps({"ID": f"{tag}-{w}-{n}", "Name": f"{tag}-{w}-{n}",
                               "Address": "10.9.1.1", "Port": 80})
            n += 1
            start = time.monotonic()
            if conn.put("/v1/agent/service/register", body) == 200:
                mine.append(time.monotonic() - start)
            else:
                bad += 1
        conn.close()
        with lock:
            lat.extend(mine)
            failed.append(bad)

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat) / (time.monotonic() - started), lat, sum(failed)


def dnsperf(port, names, seconds):
    path = tempfile.mktemp(prefix="signpost-cluster-queries-")
    with open(path, "w") as f:
        for n in names:
            f.write(f"{n}.service.consul A\n")
    try:
        out = subprocess.run(
            ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", path,
             "-l", str(seconds), "-c", "4", "-Q", "1000000"],
            capture_output=True, text=True, timeout=seconds + 30).stdout
    finally:
        os.unlink(path)
    for line in out.splitlines():
        if "Queries per second" in line:
            return float(line.split()[-1])
    sys.exit(f"dnsperf printed no rate:\n{out}")


def main():
    binary = os.path.abspath(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    writers = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 8
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
        http = [free_port() for _ in range(4)]
        dns = [free_port() for _ in range(4)]
        for i in range(3):
            procs.append(subprocess.Popen(
                [binary, "--etcd", urls, "--node", f"host{i + 1}",
                 "--dns", f"127.0.0.1:{dns[i]}",
                 "--http", f"127.0.0.1:{http[i]}", "--log-level", "warn"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # The standalone signpost DNS is compared with: same binary, no
        # etcd, no data dir (memory only, as a member's DNS path is).
        procs.append(subprocess.Popen(
            [binary, "--node", "alone", "--dns", f"127.0.0.1:{dns[3]}",
             "--http", f"127.0.0.1:{http[3]}", "--log-level", "warn"],
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
            for h in http[1:3]:
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
        for label, ports, tag in [("through member 1", http[:1], "one"),
                                  ("through members 1-3", http[:3], "three"),
                                  ("to the standalone signpost (memory only)",
                                   http[3:], "alone")]:
            rate, lat, failed = write_load(ports, writers, seconds, tag)
            print(f"{writers} concurrent writers {label}: {rate:.0f} writes/s, "
                  f"p50 {ms(pct(lat, 50))}, p99 {ms(pct(lat, 99))}, "
                  f"{failed} refused")
        for i in range(3):
            text = get(f"http://127.0.0.1:{http[i]}/metrics")[1].decode()
            counts = [line for line in text.splitlines()
                      if line.startswith(("signpost_cluster_commits", "signpost_cluster_conflicts"))]
            print(f"member {i + 1}: {', '.join(counts)}")
        if not shutil.which("dnsperf"):
            print("dnsperf is missing (apt-get install dnsperf): no DNS QPS")
            return
        # 50 services of 5 instances each, the same on the cluster (through
        # member 1) and on the standalone signpost, queried on each.
        names = [f"dns{n}" for n in range(50)]
        for port in (http[0], http[3]):
            for n in range(50):
                for i in range(5):
                    put(f"http://127.0.0.1:{port}/v1/agent/service/register",
                        json.dumps({"ID": f"dns{n}-{i}", "Name": f"dns{n}",
                                    "Address": f"10.9.2.{i + 1}", "Port": 80}))
        for h in http[1:3]:
            url = f"http://127.0.0.1:{h}/v1/catalog/service/dns49"
            wait("the DNS services on every member", lambda: len(json.loads(get(url)[1])) == 5)
        for i, label in [(3, "standalone"), (0, "member 1"), (1, "member 2"),
                         (2, "member 3")]:
            qps = dnsperf(dns[i], names, 5)
            print(f"DNS {label}: {qps:.0f} queries/s")
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
