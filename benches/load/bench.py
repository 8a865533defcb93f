#!/usr/bin/env python3
"""signpost's side-by-side load benchmark, standing on its own.

Generates one catalog (services x instances, each instance on its own node)
in the shape each server reads: a `consul.` zone file for NSD and Knot,
host-record/srv-host lines for dnsmasq, catalog registrations for signpost,
and a dnsperf query mix (A, SRV, RFC 2782 SRV, NXDOMAIN). Then for each run
and server: start it pinned to core 0, wait until it answers, and measure
with dnsperf pinned to core 1:

  sat        closed loop, no rate cap: QPS at saturation, and QPS per
             second of the server's own CPU (utime + stime)
  quota50    the same with the server held to half a core (cgroup v2
             cpu.max): a per-core figure that does not hinge on dnsperf
  rateN      open loop at N QPS: p99 latency and lost queries

Writes WORKDIR/results.csv (one row per measurement; ratios.py reads it).
Loopback only: every server listens on 127.0.0.1, ports 5301-5304.
"""
import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ADDR = "127.0.0.1"
PORTS = {"knot": 5301, "nsd": 5302, "dnsmasq": 5303, "signpost": 5304}
SERVER_CPU, CLIENT_CPU = "0", "1"
CGROUP = Path("/sys/fs/cgroup/signpost-bench")


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def ensure_tools(servers):
    need = {"dnsperf": "dnsperf", "dig": "dnsutils", "taskset": "util-linux"}
    need.update({"knot": "knot", "nsd": "nsd", "dnsmasq": "dnsmasq"})
    binary = {"knot": "knotd"}
    missing = sorted({pkg for tool, pkg in need.items()
                      if (tool not in PORTS or tool in servers)
                      and not shutil.which(binary.get(tool, tool))})
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {' '.join(missing)}: install them (apt-get install -y ...)")
    log(f"installing {' '.join(missing)}")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                   stdout=subprocess.DEVNULL)


def generate(data, services, instances, queries, seed=42):
    """The catalog in every server's shape, and the query mix."""
    data.mkdir(parents=True, exist_ok=True)
    cat = []
    n = 0
    for s in range(services):
        for _ in range(instances):
            n += 1
            cat.append((f"s{s}", f"n{n}", f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255 or 1}", 8000 + n % 1000))
    zone = ["$ORIGIN consul.", "$TTL 0",
            "@ IN SOA ns.consul. hostmaster.consul. ( 1 3600 600 86400 0 )",
            "@ IN NS ns.consul.", "ns IN A 127.0.0.1"]
    masq = ["local=/consul/", "host-record=ns.consul,127.0.0.1"]
    regs = []
    for name, node, addr, port in cat:
        target = f"{node}.node.dc1.consul"
        zone += [f"{name}.service IN A {addr}",
                 f"{name}.service IN SRV 1 1 {port} {target}.",
                 f"_{name}._tcp.service IN SRV 1 1 {port} {target}.",
                 f"{node}.node.dc1 IN A {addr}"]
        masq += [f"host-record={name}.service.consul,{addr}",
                 f"host-record={target},{addr}",
                 f"srv-host={name}.service.consul,{target},{port},1,1",
                 f"srv-host=_{name}._tcp.service.consul,{target},{port},1,1"]
        regs.append({"Datacenter": "dc1", "Node": node, "Address": addr,
                     "Service": {"ID": f"{name}-{node}", "Service": name, "Address": addr, "Port": port}})
    (data / "consul.zone").write_text("\n".join(zone) + "\n")
    (data / "dnsmasq.conf").write_text("\n".join(masq) + "\n")
    defs = data / "defs"
    defs.mkdir(exist_ok=True)
    (defs / "catalog.json").write_text(json.dumps(regs))
    rng = random.Random(seed)
    lines = []
    for _ in range(queries):
        s = rng.randrange(services)
        r = rng.random()
        if r < 0.05:
            lines.append(f"nx{rng.randrange(10**6)}.service.consul A")
        elif r < 0.525:
            lines.append(f"s{s}.service.consul A")
        elif r < 0.76:
            lines.append(f"s{s}.service.consul SRV")
        else:
            lines.append(f"_s{s}._tcp.service.consul SRV")
    (data / "queries.txt").write_text("\n".join(lines) + "\n")
    log(f"{services} services x {instances} instances, {queries} queries -> {data}")


def command(name, work, signpost_bin):
    data, srv = work / "data", work / "srv" / name
    srv.mkdir(parents=True, exist_ok=True)
    port = PORTS[name]
    if name == "knot":
        (srv / "db").mkdir(exist_ok=True)
        (srv / "knot.conf").write_text(f"""server:
    rundir: "{srv}"
    listen: {ADDR}@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{srv}/db"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "{srv}"
    semantic-checks: off
    journal-content: none
    zonefile-sync: -1
zone:
  - domain: consul.
    file: "{data}/consul.zone"
""")
        return ["knotd", "-c", str(srv / "knot.conf")]
    if name == "nsd":
        # Debian's NSD rate-limits per /24 by default; all load is loopback.
        (srv / "nsd.conf").write_text(f"""server:
    ip-address: {ADDR}@{port}
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{srv}"
    database: ""
    zonelistfile: "{srv}/zone.list"
    xfrdfile: "{srv}/xfrd.state"
    xfrdir: "{srv}"
    pidfile: "{srv}/nsd.pid"
    logfile: "{srv}/nsd.log"
    verbosity: 0
    zonefiles-write: 0
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: consul
    zonefile: "{data}/consul.zone"
""")
        return ["nsd", "-d", "-c", str(srv / "nsd.conf")]
    if name == "dnsmasq":
        return ["dnsmasq", "--keep-in-foreground", f"--conf-file={data}/dnsmasq.conf",
                f"--listen-address={ADDR}", f"--port={port}", "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--no-poll", "--cache-size=0",
                "--user=root", "--group=root", f"--pid-file={srv}/dnsmasq.pid", "--log-facility=-"]
    return [str(signpost_bin), "--config", str(HERE / "signpost.toml"), "--dns", f"{ADDR}:{port}",
            "--http", "127.0.0.1:0", "--zones", str(data / "defs"), "--node", "bench",
            "--log-level", "warn"]


def session_pids(sid):
    """Every process in session `sid` (a server and the workers it forks)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if int(f[3]) == sid:
                    pids.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def cpu_ticks(sid):
    """utime + stime of every process of a server's session, in ticks."""
    total = 0
    for pid in session_pids(sid):
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total


def steal(core):
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            f = [int(x) for x in line.split()[1:]]
            return f[7], sum(f)
    return 0, 1


def answers(port):
    out = subprocess.run(["dig", f"@{ADDR}", "-p", str(port), "+short", "+time=1", "+tries=1",
                          "s0.service.consul", "A"], capture_output=True, text=True).stdout
    return out.strip().startswith("10.")


def dnsperf(work, port, mode, duration, rate, rate_duration):
    args = ["taskset", "-c", CLIENT_CPU, "dnsperf", "-s", ADDR, "-p", str(port),
            "-d", str(work / "data" / "queries.txt"), "-c", "4", "-T", "1", "-q", "100", "-t", "2"]
    if mode.startswith("rate"):
        args += ["-Q", str(rate), "-l", str(rate_duration), "-v"]
    else:
        args += ["-l", str(duration)]
    return subprocess.run(args, capture_output=True, text=True).stdout


def parse(out):
    """QPS and losses from dnsperf's summary; p99 (seconds) from its `-v`
    lines: `> NOERROR s0.service.consul A 0.000163`."""
    row = {}
    lat = []
    for line in out.splitlines():
        p = line.split()
        if "Queries per second" in line:
            row["qps"] = float(p[-1])
        elif "Queries lost" in line:
            row["lost"] = int(p[2])
        elif line.startswith("> ") and len(p) >= 2:
            try:
                lat.append(float(p[-1]))
            except ValueError:
                pass
    if lat:
        lat.sort()
        row["p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return row


def cgroup():
    """Where a CPU quota can be set: ("v2", dir) or ("v1", dir), or None."""
    if os.geteuid() != 0:
        return None
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return ("v2", Path("/sys/fs/cgroup/signpost-bench"))
    if Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists():
        return ("v1", Path("/sys/fs/cgroup/cpu/signpost-bench"))
    return None


def quota(cg, sid, on):
    """Holds a server's session to half a core, or lets it go."""
    kind, d = cg
    root = d.parent
    if on:
        d.mkdir(exist_ok=True)
        if kind == "v2":
            (d / "cpu.max").write_text("5000 10000")
        else:
            (d / "cpu.cfs_period_us").write_text("10000")
            (d / "cpu.cfs_quota_us").write_text("5000")
    for pid in session_pids(sid):
        try:
            ((d if on else root) / "cgroup.procs").write_text(str(pid))
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="nsd,knot,dnsmasq,signpost")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--duration", type=int, default=10, help="seconds of each saturation run")
    ap.add_argument("--rate", type=int, default=20000, help="QPS of the latency run (0: none)")
    ap.add_argument("--rate-duration", type=int, default=10)
    ap.add_argument("--quota", type=int, default=50, help="50: also measure at half a core; 0: skip")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=5)
    ap.add_argument("--queries", type=int, default=100000)
    ap.add_argument("--signpost", default=str(ROOT / "target" / "release" / "signpost"))
    ap.add_argument("--workdir", default=f"/tmp/bench_work/signpost-{time.strftime('%Y%m%d-%H%M%S')}")
    a = ap.parse_args()
    servers = [s for s in a.servers.split(",") if s]
    for s in servers:
        if s not in PORTS:
            sys.exit(f"unknown server {s!r}; choose from {', '.join(PORTS)}")
    ensure_tools(servers)
    work = Path(a.workdir)
    generate(work / "data", a.services, a.instances, a.queries)
    cg = cgroup() if a.quota else None
    if a.quota and not cg:
        log("no cgroup cpu controller or not root: skipping the half-core runs")
    modes = ["sat"] + (["quota50"] if cg else []) + ([f"rate{a.rate}"] if a.rate else [])
    rows = []
    for run in range(1, a.runs + 1):
        for name in servers:
            cmd = command(name, work, a.signpost)
            logf = open(work / "srv" / f"{name}.log", "a")
            proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, *cmd], stdout=logf, stderr=logf,
                                    start_new_session=True)
            deadline = time.time() + 60
            while not answers(PORTS[name]) and time.time() < deadline and proc.poll() is None:
                time.sleep(0.2)
            if not answers(PORTS[name]):
                log(f"{name} did not answer s0.service.consul within 60 s; see {logf.name}")
                os.killpg(proc.pid, signal.SIGKILL)
                continue
            for mode in modes:
                if mode == "quota50":
                    quota(cg, proc.pid, True)
                c0, (st0, tot0) = cpu_ticks(proc.pid), steal(SERVER_CPU)
                t0 = time.time()
                out = dnsperf(work, PORTS[name], mode, a.duration, a.rate, a.rate_duration)
                elapsed = time.time() - t0
                c1, (st1, tot1) = cpu_ticks(proc.pid), steal(SERVER_CPU)
                if mode == "quota50":
                    quota(cg, proc.pid, False)
                (work / f"r{run}_{name}_{mode}.txt").write_text(out)
                row = {"run": run, "name": name, "mode": mode, **parse(out)}
                cpu_s = (c1 - c0) / os.sysconf("SC_CLK_TCK")
                if cpu_s > 0 and "qps" in row:
                    row["ceiling"] = row["qps"] * elapsed / cpu_s
                row["srv_steal"] = (st1 - st0) / max(1, tot1 - tot0)
                rows.append(row)
                log(f"run {run} {name} {mode}: " + ", ".join(
                    f"{k} {v:,.4g}" for k, v in row.items() if isinstance(v, float)))
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    fields = ["run", "name", "mode", "qps", "ceiling", "p99", "lost", "srv_steal"]
    with open(work / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    print(work)


if __name__ == "__main__":
    main()
