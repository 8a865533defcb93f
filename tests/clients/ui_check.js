// Drives the web UI in headless Chromium (playwright-core): the services
// view, a service whose instance fails while the page is open (shown as
// critical without a reload), and the KV editor's check-and-set. Run by
// tests/it/ui.rs: `node ui_check.js MODULE_DIR BASE_URL [SCREENSHOT_DIR]`.
"use strict";
const assert = require("assert/strict");
const path = require("path");

const [moduleDir, base, shots, mode] = process.argv.slice(2);
const { chromium } = require(path.resolve(moduleDir, "node_modules", "playwright-core"));

async function put(p, body) {
  const r = await fetch(base + p, { method: "PUT", body });
  const text = await r.text();
  assert.ok(r.ok, `${p}: ${r.status} ${text}`);
  return text;
}

async function main() {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const shot = async (name, fullPage = true) => {
    if (shots && shots !== "-") await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage });
  };
  if (mode === "scale") {
    // 5,000 services on 1,000 nodes (loaded by the test): how long a
    // change takes to show in the Services and Nodes views, reported.
    let t = Date.now();
    await page.goto(base + "/");
    await page.waitForFunction(() => document.querySelector('a[href="#/service/s4999"]'),
      null, { timeout: 30000, polling: "raf" });
    console.log(`ok services view: 5,000 services drawn ${Date.now() - t} ms after opening it`);
    t = Date.now();
    await put("/v1/catalog/register", JSON.stringify({
      Node: "zz-host", Address: "10.3.0.7", Service: { Service: "zz-new", ID: "zz-new-1", Port: 80 },
      Check: { CheckID: "zz", ServiceID: "zz-new-1", Name: "zz", Status: "critical" },
    }));
    // Looked for by one cheap query, polled each frame: a text selector
    // scans every row's text and would time itself.
    await page.waitForFunction(() => {
      const a = document.querySelector('a[href="#/service/zz-new"]');
      return a && a.closest("tr").textContent.includes("1 critical");
    }, null, { timeout: 10000, polling: "raf" });
    console.log(`ok services view: a new, critical service shown ${Date.now() - t} ms after its registration (5,000 services)`);
    await page.fill("input[aria-label='Filter services']", "zz");
    await page.waitForFunction(() => document.querySelectorAll("main tbody tr").length === 1);
    await shot("services-5000-filtered", false);
    t = Date.now();
    const all = await (await fetch(base + "/v1/signpost/ui/services")).json();
    console.log(`   (of which the read itself: ${all.length} services in ${Date.now() - t} ms)`);
    t = Date.now();
    await page.goto(base + "/ui/#/nodes");
    await page.waitForFunction(() => [...document.querySelectorAll("main td:first-child")]
      .some((td) => td.textContent === "n999"), null, { timeout: 30000 });
    console.log(`ok nodes view: 1,000 nodes drawn ${Date.now() - t} ms after opening it`);
    t = Date.now();
    await put("/v1/catalog/register", JSON.stringify({
      Node: "zz-node", Address: "10.2.0.1", Check: { CheckID: "zz-node-check", Name: "zz node check", Status: "warning" },
    }));
    await page.waitForSelector("text=zz node check", { timeout: 10000 });
    console.log(`ok nodes view: a new node shown ${Date.now() - t} ms after its registration (1,000 nodes)`);
    await browser.close();
    return;
  }
  if (mode && mode.startsWith("token:")) {
    // Writes need a token: refused with the API's reason, then accepted
    // once the user enters it.
    await page.goto(base + "/ui/#/kv/");
    await page.fill("input[aria-label='New key name']", "app/flag");
    await page.click("text=Create");
    await page.fill("textarea", "on");
    await page.click("main button.primary");
    await page.waitForSelector("text=Permission denied");
    await page.fill("#token", mode.slice(6));
    await page.click("#token-form button");
    await page.fill("input[aria-label='New key name']", "app/flag");
    await page.click("text=Create");
    await page.fill("textarea", "on");
    await page.click("main button.primary");
    await page.waitForSelector("text=Saved.");
    const r = await fetch(base + "/v1/kv/app/flag?raw");
    assert.equal(await r.text(), "on");
    console.log("ok a refused write shows the API's reason; with the token it is saved");
    await browser.close();
    return;
  }

  await page.goto(base + "/");
  await page.waitForSelector("text=web");
  assert.match(await page.textContent("main"), /2 passing/);
  await shot("services");
  // The filter box narrows the list, by keyboard.
  await page.keyboard.type("db");
  await page.waitForFunction(() => !document.querySelector("main").textContent.includes("api"));
  console.log("ok services view");

  // An API-registered service with a TTL check, failed while its page is
  // open.
  for (const i of [1, 2]) {
    await put("/v1/agent/service/register", JSON.stringify({
      Name: "shop", ID: `shop-${i}`, Address: `10.0.0.${i}`, Port: 8000 + i, Tags: ["v1"],
      Meta: { version: "1.4" }, Check: { TTL: "60s", Status: "passing" },
    }));
  }
  await page.goto(base + "/ui/#/service/shop");
  await page.waitForSelector("text=shop-2");
  assert.doesNotMatch(await page.textContent("main"), /no: critical/);
  const t = Date.now();
  await put("/v1/agent/check/fail/service:shop-2?note=connection%20refused", "");
  await page.waitForSelector("text=no: critical", { timeout: 2000 });
  const took = Date.now() - t;
  await shot("service-failing");
  console.log(`ok failing instance shown as critical ${took} ms after the check failed, without a reload`);

  // KV: create, then a concurrent write makes the stale editor's save fail.
  await put("/v1/kv/config/web/threads", "8");
  await put("/v1/kv/config/web/settings", JSON.stringify({ workers: 4, debug: false }));
  await page.goto(base + "/ui/#/kv/config/web/");
  await page.click("text=settings");
  await page.waitForSelector("textarea");
  await shot("kv-editor");
  await page.fill("textarea", JSON.stringify({ workers: 8 }));
  await put("/v1/kv/config/web/settings", JSON.stringify({ workers: 16 }));
  await page.click("main button.primary");
  await page.waitForSelector("text=check-and-set failed");
  const r = await fetch(base + "/v1/kv/config/web/settings?raw");
  assert.equal(await r.text(), JSON.stringify({ workers: 16 }), "the other write survives");
  console.log("ok KV editor refuses a stale save and says so");

  await page.goto(base + "/ui/#/nodes");
  await page.waitForSelector("text=testnode");
  console.log("ok nodes view");

  await page.goto(base + "/ui/#/sessions");
  await page.waitForSelector("text=No sessions.");
  assert.equal(await page.getAttribute("td.muted", "colspan"), "7", "the empty row spans the table");

  const sess = JSON.parse(await put("/v1/session/create", JSON.stringify({ Name: "leader-election" })));
  await page.goto(base + "/ui/#/sessions");
  await page.waitForSelector("text=leader-election");
  assert.match(await page.textContent("main"), new RegExp(sess.ID));
  const r2 = await fetch(base + "/v1/query", { method: "POST",
    body: JSON.stringify({ Name: "shop-v1", Service: { Service: "shop", Tags: ["v1"], OnlyPassing: true } }) });
  assert.ok(r2.ok);
  await page.goto(base + "/ui/#/queries");
  await page.waitForSelector("text=shop-v1.query.consul");
  console.log("ok sessions and prepared queries views");

  await page.goto(base + "/ui/#/dns");
  await page.fill("#dns-name", "web.service.consul");
  await page.keyboard.press("Enter");
  await page.waitForSelector("text=ANSWER SECTION");
  console.log("ok DNS view");
  await browser.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
