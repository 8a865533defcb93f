#!/usr/bin/env python3
"""Ten thousand watchers on one signpost, on default settings.

10,000 blocking `health/service` queries spread over 1,000 services (one
instance each) and 50 client addresses (127.0.0.10-59, as consul-template
fleets, Prometheus and UIs hold them: one connection each), held with
`wait=300s`. Then 50 changes, each to one service (a new instance), one
after another. Reports:

  * held: how many are waiting at once, and how many were cut (a
    connection closed or answered without a change);
  * the server's resident memory per held query;
  * wake latency (change acknowledged -> each of its watchers answered),
    p50/p99, and how many watchers of other services woke (should be 0);
  * a write's and `/health`'s latency while all are held.

    python3 benches/watchers.py               # builds the release binary
    WATCHERS=3000 python3 benches/watchers.py

Loopback only. Needs a few more than 10,000 open files (raised here to the
hard limit).
"""

import asyncio
import http.client
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATCHERS = int(os.environ.get("WATCHERS", "10000"))
SERVICES = int(os.environ.get("SERVICES", "1000"))
CLIENTS = int(os.environ.get("CLIENTS", "50"))
CHANGES = int(os.environ.get("CHANGES", "50"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def request(addr, method, path, body=None):
    conn = http.client.HTTPConnection(*addr, timeout=30)
    conn.request(method, path, body=body)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, r.getheader("X-Consul-Index"), data


def metric(addr, name):
    _, _, text = request(addr, "GET", "/metrics")
    m = re.search(rf"^signpost_{name} (\d+)", text.decode(), re.M)
    return int(m.group(1)) if m else None


def register(addr, service, ident):
    body = json.dumps({"Name": service, "ID": ident, "Address": "10.0.0.1", "Port": 80})
    status, _, data = request(addr, "PUT", "/v1/agent/service/register", body)
    assert status == 200, data


class Watcher:
    """One connection holding one blocking query at a time."""

    def __init__(self, addr, source, service, index):
        self.addr, self.source, self.service, self.index = addr, source, service, index
        self.answers = []  # (time answered, index)
        self.cut = 0

    async def run(self, stop, connecting):
        # A few hundred connects at a time: ten thousand at once overflow
        # the listen backlog and stall in SYN retries.
        async with connecting:
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind((self.source, 0))
            loop = asyncio.get_running_loop()
            try:
                await loop.sock_connect(sock, self.addr)
            except OSError:
                self.cut += 1
                return
            reader, writer = await asyncio.open_connection(sock=sock)
        while not stop.is_set():
            path = f"/v1/health/service/{self.service}?index={self.index}&wait=300s"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                self.cut += 1
                return
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
            await reader.readexactly(length)
            index = int(re.search(rb"(?i)x-consul-index: (\d+)", head).group(1))
            self.answers.append((time.monotonic(), index))
            if index <= self.index or re.search(rb"(?i)connection: close", head):
                self.cut += 1  # answered without a change, or closed
                return
            self.index = index
        writer.close()


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--bin", "signpost"], cwd=ROOT, check=True
    )
    work = tempfile.mkdtemp()
    log = open(os.path.join(work, "log"), "w+")
    proc = subprocess.Popen(
        [os.path.join(ROOT, "target/release/signpost"), "--dns", "127.0.0.1:0",
         "--http", "127.0.0.1:0", "--node", "bench"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        addr = None
        for _ in range(300):
            log.seek(0)
            m = re.search(r"serving HTTP on ([0-9.]+):(\d+)", log.read())
            if m:
                addr = (m.group(1), int(m.group(2)))
                break
            time.sleep(0.05)
        assert addr, "signpost did not start"
        for s in range(SERVICES):
            register(addr, f"s{s}", f"s{s}-0")
        indexes = {}
        for s in range(SERVICES):
            _, index, _ = request(addr, "GET", f"/v1/health/service/s{s}")
            indexes[s] = int(index)
        before = rss_kib(proc.pid)
        stop = asyncio.Event()
        watchers = [
            Watcher(addr, f"127.0.0.{10 + w % CLIENTS}", f"s{w % SERVICES}", indexes[w % SERVICES])
            for w in range(WATCHERS)
        ]
        connecting = asyncio.Semaphore(256)
        tasks = [asyncio.create_task(w.run(stop, connecting)) for w in watchers]
        t0 = time.monotonic()
        held = 0
        while time.monotonic() - t0 < 60:
            held = await asyncio.to_thread(metric, addr, "http_blocking_queries")
            if held >= WATCHERS:
                break
            await asyncio.sleep(0.2)
        took = time.monotonic() - t0
        await asyncio.sleep(1)
        during = rss_kib(proc.pid)
        t = time.monotonic()
        status, _, _ = await asyncio.to_thread(request, addr, "GET", "/health")
        health_ms = (time.monotonic() - t) * 1000
        wakes, unrelated = [], 0
        write_ms = []
        for c in range(CHANGES):
            target = (c * 37) % SERVICES
            mine = [w for w in watchers if w.service == f"s{target}"]
            seen = sum(len(w.answers) for w in watchers)
            counts = [len(w.answers) for w in mine]
            mine_seen = sum(counts)
            t = time.monotonic()
            await asyncio.to_thread(register, addr, f"s{target}", f"s{target}-c{c}")
            acked = time.monotonic()
            write_ms.append((acked - t) * 1000)
            deadline = acked + 5
            while time.monotonic() < deadline and any(
                len(w.answers) == n for w, n in zip(mine, counts)
            ):
                await asyncio.sleep(0.001)
            for w, n in zip(mine, counts):
                wakes.extend((at - t) * 1000 for at, _ in w.answers[n:])
            await asyncio.sleep(0.05)
            woken = sum(len(w.answers) for w in mine) - mine_seen
            unrelated += sum(len(w.answers) for w in watchers) - seen - woken
        stop.set()
        cut = sum(w.cut for w in watchers)
        wakes.sort()
        pct = lambda p: wakes[min(len(wakes) - 1, int(len(wakes) * p))] if wakes else float("nan")
        print(f"watchers: {WATCHERS} blocking health/service queries over {SERVICES} services "
              f"and {CLIENTS} client addresses, default settings")
        print(f"  held at once      {held} (all held {took:.1f} s after the first connect)")
        print(f"  cut               {cut}")
        print(f"  memory            {before / 1024:.1f} MiB before, {during / 1024:.1f} MiB held: "
              f"{(during - before) * 1024 / max(held, 1):.0f} B per held query")
        print(f"  /health while held {health_ms:.1f} ms (status {status})")
        print(f"  write while held  p50 {statistics.median(write_ms):.1f} ms, "
              f"max {max(write_ms):.1f} ms")
        print(f"  wake latency      {len(wakes)} wakes over {CHANGES} changes: "
              f"p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {wakes[-1] if wakes else 0:.1f} ms")
        print(f"  unrelated wakes   {unrelated}")
        for t in tasks:
            t.cancel()
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
