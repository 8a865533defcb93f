#!/usr/bin/env python3
"""signpost's ratios to each peer from one harness run (results.csv), plus
the TCP/UDP comparison written by run.sh. Prints markdown."""
import csv
import statistics
import sys
from pathlib import Path

work = Path(sys.argv[1])
rows = list(csv.DictReader(open(work / "results.csv")))


def med(name, mode, field):
    vals = [float(r[field]) for r in rows if r["name"] == name and r["mode"] == mode and r[field] not in ("", None)]
    return statistics.median(vals) if vals else None


servers = sorted({r["name"] for r in rows})
metrics = [
    ("saturated UDP QPS", "sat", "qps", True),
    ("QPS at 50% of a core (quota50)", "quota50", "qps", True),
    ("QPS per server CPU-second", "sat", "ceiling", True),
    ("p99 latency at 20k QPS (ms; a ratio below 1 is better)", "rate20000", "p99", False),
    ("lost queries at 20k QPS", "rate20000", "lost", False),
    ("steal on the server core at 20k QPS (%)", "rate20000", "srv_steal", False),
]
print("| measure | " + " | ".join(servers) + " | " + " | ".join(f"signpost / {s}" for s in servers if s != "signpost") + " |")
print("|---" * (1 + len(servers) + len(servers) - 1) + "|")
for label, mode, field, higher_better in metrics:
    vals = {s: med(s, mode, field) for s in servers}
    scale = {"p99": 1000, "srv_steal": 100}.get(field, 1)
    vals = {s: (v * scale if v is not None else None) for s, v in vals.items()}
    fmt = {"p99": "{:.2f}", "srv_steal": "{:.1f}", "lost": "{:.0f}"}.get(field, "{:,.1f}")
    cells = ["-" if vals[s] is None else fmt.format(vals[s]) for s in servers]
    ratios = []
    for s in servers:
        if s == "signpost":
            continue
        a, b = vals.get("signpost"), vals[s]
        if a is None or b is None or b == 0 or field == "srv_steal":
            ratios.append("-")
        else:
            ratios.append(f"{a / b:.2f}")
    print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")

# The same ratios rotation by rotation (each peer against signpost's run of
# the same rotation), so a median comes with its spread.
runs = sorted({r["run"] for r in rows}, key=int)
if len(runs) > 1:
    print()
    print(f"Per rotation ({len(runs)} rotations): median (min-max) of signpost / peer")
    print()
    peers = [s for s in servers if s != "signpost"]
    print("| measure | " + " | ".join(f"signpost / {s}" for s in peers) + " |")
    print("|---" * (1 + len(peers)) + "|")
    for label, mode, field, higher_better in metrics[:4]:
        cells = []
        for peer in peers:
            ratios = []
            for run in runs:
                def one(name):
                    v = [float(r[field]) for r in rows if r["name"] == name and r["mode"] == mode
                         and r["run"] == run and r[field] not in ("", None)]
                    return v[0] if v else None
                a, b = one("signpost"), one(peer)
                if a is not None and b:
                    ratios.append(a / b)
            cells.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                         if ratios else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")

qps = {}
for mode in ("udp", "tcp"):
    f = work / f"signpost-{mode}.txt"
    if f.exists():
        for line in f.read_text().splitlines():
            if "Queries per second" in line:
                qps[mode] = float(line.split()[-1])
if len(qps) == 2:
    print()
    print(f"TCP with connection reuse: {qps['tcp']:,.0f} QPS vs UDP {qps['udp']:,.0f} QPS "
          f"(UDP/TCP = {qps['udp'] / qps['tcp']:.2f}; the target is at most 2)")
