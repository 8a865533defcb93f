"""Drives a running signpost through py-consul (PyPI), as Consul tutorials
use it. Run by tests/it/clients.rs: `python py_consul_check.py HOST PORT`.
Every step asserts; the script exits non-zero on the first failure."""

import sys
import threading
import time

import consul

host, port = sys.argv[1], int(sys.argv[2])
c = consul.Consul(host=host, port=port)


def step(name):
    print(f"ok {name}", flush=True)


# Keys as python-consul sends them: `serviceid`, `enabletagoverride`.
assert c.agent.service.register(
    "web", service_id="web-0", port=8080, tags=["v1"], enable_tag_override=True,
    meta={"version": "1.2"},
)
assert c.agent.service.register("web", service_id="web-1", port=8081, tags=["v2"])
assert c.agent.service.register("db", service_id="db-0", port=5432)
assert c.agent.check.register("web-0 alive", consul.Check.ttl("30s"), check_id="web0-ttl",
                              service_id="web-0")
checks = c.agent.checks()
assert checks["web0-ttl"]["ServiceID"] == "web-0", checks["web0-ttl"]
assert c.agent.services()["web-0"]["EnableTagOverride"] is True
# The TTL check starts critical and belongs to web-0 only: web-1 and db
# stay passing.
_, passing = c.health.service("web", passing=True)
assert [e["Service"]["ID"] for e in passing] == ["web-1"], passing
_, db = c.health.service("db", passing=True)
assert len(db) == 1, db
c.agent.check.ttl_pass("web0-ttl")
_, passing = c.health.service("web", passing=True)
assert len(passing) == 2, passing
step("lowercase keys: serviceid, enabletagoverride")

# ?filter= on the endpoints Consul takes it.
svcs = c.agent.services(filter_expr='Service == "web" and "v1" in Tags')
assert list(svcs) == ["web-0"], svcs
_, entries = c.health.service("web", filter_expr='Service.Meta.version == "1.2"')
assert [e["Service"]["ID"] for e in entries] == ["web-0"], entries
_, nodes = c.catalog.service("web", filter_expr="ServiceTags contains v2")
assert [n["ServiceID"] for n in nodes] == ["web-1"], nodes
checks = c.agent.checks(filter_expr="Status == passing and ServiceID == web-0")
assert list(checks) == ["web0-ttl"], checks
try:
    c.agent.services(filter_expr="Service ==")
    raise AssertionError("a bad filter was accepted")
except consul.ConsulException as e:
    assert "position" in str(e), e
_, none = c.catalog.nodes(node_meta={"rack": "nowhere"})
assert none == [], none
step("filters and node-meta")

# Transactions.
res = c.txn.put([
    {"KV": {"Verb": "set", "Key": "cfg/a", "Value": "MQ=="}},
    {"KV": {"Verb": "set", "Key": "cfg/b", "Value": "Mg=="}},
    {"KV": {"Verb": "get-tree", "Key": "cfg/"}},
])
assert res["Errors"] is None and len(res["Results"]) == 4, res
_, a = c.kv.get("cfg/a")
assert a["Value"] == b"1", a
try:
    c.txn.put([
        {"KV": {"Verb": "set", "Key": "cfg/c", "Value": "Mw=="}},
        {"KV": {"Verb": "check-index", "Key": "cfg/a", "Index": 1}},
    ])
    raise AssertionError("a failing transaction was accepted")
except consul.ConsulException:
    pass
_, missing = c.kv.get("cfg/c")
assert missing is None, "a failed transaction left a write behind"
step("txn: applied whole or not at all")

# Events.
fired = c.event.fire("deploy", "v42")
assert fired["Name"] == "deploy"
index, events = c.event.list(name="deploy")
assert [e["Payload"] for e in events] == [b"v42"], events
step("events")

# Agent endpoints that load balancers and orchestrators probe.
assert c.agent.maintenance("true", "patching")
_, passing = c.health.service("web", passing=True)
assert passing == [], passing
assert c.agent.maintenance("false")
_, passing = c.health.service("web", passing=True)
assert len(passing) == 2, passing
assert c.coordinate.datacenters()[0]["Datacenter"] == "dc1"
step("maintenance, coordinates")

# Consul's leader-election recipe: two contenders, a session each with a
# TTL, acquiring one key; the leader stops renewing (its process hangs),
# its session runs out, and the other takes over.
KEY = "service/web/leader"
TTL, DELAY = 10, 1
leaders = []
stop = threading.Event()


def contender(name, renew):
    me = consul.Consul(host=host, port=port)
    sid = me.session.create(name=name, ttl=TTL, lock_delay=DELAY)

    def renewer():
        # A live process renews its session all along; a hung one stops.
        while not stop.is_set() and renew.is_set():
            me.session.renew(sid)
            time.sleep(1)

    threading.Thread(target=renewer, daemon=True).start()
    index = None
    while not stop.is_set():
        if me.kv.put(KEY, name, acquire=sid):
            leaders.append((name, time.monotonic()))
            return  # leads until its session ends
        # Not the leader: block until the key changes, then try again.
        index, _ = me.kv.get(KEY, index=index, wait="2s")


renew_a, renew_b = threading.Event(), threading.Event()
renew_a.set()
renew_b.set()
a = threading.Thread(target=contender, args=("a", renew_a), daemon=True)
a.start()
deadline = time.monotonic() + 10
while not leaders and time.monotonic() < deadline:
    time.sleep(0.05)
assert [n for n, _ in leaders] == ["a"], leaders
b = threading.Thread(target=contender, args=("b", renew_b), daemon=True)
b.start()
time.sleep(2)
assert [n for n, _ in leaders] == ["a"], "b took a held lock"
hung = time.monotonic()
renew_a.clear()
deadline = hung + 2 * TTL + DELAY + 5
while len(leaders) < 2 and time.monotonic() < deadline:
    time.sleep(0.1)
stop.set()
assert [n for n, _ in leaders] == ["a", "b"], leaders
took = leaders[1][1] - hung
# Consul invalidates within TTL to 2 x TTL; then the lock delay.
assert TTL - 1 <= took <= 2 * TTL + DELAY + 3, took
_, held = c.kv.get(KEY)
assert held["Value"] == b"b" and held["Session"], held
step(f"leader election: b took over {took:.1f}s after a stopped renewing")
