// Drives a running signpost through the npm `consul` package, as Node.js
// gateways use it. Run by tests/it/clients.rs:
// `node npm_consul_check.js MODULE_DIR HOST PORT`. Every step asserts; the
// script exits non-zero on the first failure.
"use strict";
const assert = require("assert/strict");
const path = require("path");

const [moduleDir, host, port] = process.argv.slice(2);
const Consul = require(path.resolve(moduleDir, "node_modules", "consul"));
const consul = new Consul({ host, port: Number(port) });

function step(name) {
  console.log(`ok ${name}`);
}

async function main() {
  await consul.agent.service.register({
    name: "api",
    id: "api-0",
    port: 9000,
    tags: ["blue"],
    meta: { build: "7" },
    check: { ttl: "30s", status: "passing" },
  });
  await consul.agent.service.register({ name: "api", id: "api-1", port: 9001, tags: ["green"] });
  let entries = await consul.health.service({ service: "api", passing: true });
  assert.equal(entries.length, 2);
  entries = await consul.health.service({ service: "api", filter: "blue in Service.Tags" });
  assert.deepEqual(entries.map((e) => e.Service.ID), ["api-0"]);
  const nodes = await consul.catalog.service.nodes({ service: "api", filter: 'ServiceMeta.build == "7"' });
  assert.deepEqual(nodes.map((n) => n.ServiceID), ["api-0"]);
  await assert.rejects(consul.agent.service.list({ filter: "Service matches \"[\"" }), (err) => {
    assert.equal(err.response.statusCode, 400);
    assert.match(String(err.response.body), /position 16/);
    return true;
  });
  step("register, health, filters");

  // A watch is a loop of blocking queries: a failing check shows up.
  const watch = consul.watch({
    method: consul.health.service,
    options: { service: "api", passing: true, wait: "5s" },
  });
  const changes = [];
  watch.on("change", (data) => changes.push(data.length));
  watch.on("error", (err) => changes.push(`error ${err.message}`));
  const until = async (pred, what) => {
    const deadline = Date.now() + 10000;
    while (!pred()) {
      assert.ok(Date.now() < deadline, `timed out waiting for ${what}: ${JSON.stringify(changes)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await until(() => changes.length >= 1, "the first answer");
  await consul.agent.check.fail("service:api-0");
  await until(() => changes.includes(1), "api-0 to leave ?passing");
  watch.end();
  step("watch sees a check fail");

  // Transactions: a failing check-not-exists undoes the set before it.
  await consul.transaction.create([{ KV: { Verb: "set", Key: "app/x", Value: Buffer.from("1").toString("base64") } }]);
  const x = await consul.kv.get("app/x");
  assert.equal(x.Value, "1");
  await assert.rejects(
    consul.transaction.create([
      { KV: { Verb: "set", Key: "app/y", Value: "eQ==" } },
      { KV: { Verb: "check-not-exists", Key: "app/x" } },
    ]),
  );
  assert.equal(await consul.kv.get("app/y"), undefined);
  step("txn");

  // Sessions and locks.
  const { ID: sid } = await consul.session.create({ name: "job", ttl: "15s", behavior: "delete" });
  assert.equal(await consul.kv.set({ key: "locks/job", value: "me", acquire: sid }), true);
  const { ID: other } = await consul.session.create({ name: "other" });
  // The library turns the JSON `false` into undefined: not true is the test.
  assert.notEqual(await consul.kv.set({ key: "locks/job", value: "them", acquire: other }), true);
  const held = await consul.kv.get("locks/job");
  assert.equal(held.Session, sid);
  await consul.session.destroy(sid);
  assert.equal(await consul.kv.get("locks/job"), undefined, "behavior delete removes the key");
  step("sessions and locks");

  // Events and maintenance.
  const fired = await consul.event.fire("reload", "now");
  assert.equal(fired.Name, "reload");
  const events = await consul.event.list({ name: "reload" });
  assert.equal(events.length, 1);
  assert.equal(events[0].Payload, "now");
  await consul.agent.service.maintenance({ id: "api-1", enable: true, reason: "deploy" });
  entries = await consul.health.service({ service: "api", passing: true });
  assert.equal(entries.length, 0);
  await consul.agent.service.maintenance({ id: "api-1", enable: false });
  entries = await consul.health.service({ service: "api", passing: true });
  assert.equal(entries.length, 1);
  step("events, maintenance");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
