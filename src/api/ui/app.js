// signpost's web UI: plain DOM, no framework, no build step. Every view
// follows its data with a blocking query on the relevant index (no polling
// loop), and every write sends the ACL token kept in this browser.
"use strict";

const main = document.getElementById("main");
const live = document.getElementById("live");
let generation = 0; // bumps on every view change; stale loops stop

// --- small helpers --------------------------------------------------------

/** Builds an element: h("a", {href: "#"}, "text", child...). Text is set as
 * text, never parsed as HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A table with these column headings above `body`. */
function table(headings, body) {
  return h("table", {}, h("thead", {}, h("tr", {}, headings.map((t) => h("th", {}, t)))), body);
}

/** Shows `rows` in `body`, or one muted row saying `empty` when there are
 * none (and `empty` is given). */
function fill(body, rows, empty) {
  // Rows already in place stay untouched; only new ones are inserted and
  // gone ones removed (a change among thousands moves one row, not all).
  const keep = new Set(rows);
  let cur = body.firstChild;
  const drop = () => { while (cur && !keep.has(cur)) { const next = cur.nextSibling; cur.remove(); cur = next; } };
  for (const r of rows) {
    drop();
    if (cur === r) cur = cur.nextSibling;
    else body.insertBefore(r, cur);
  }
  while (cur) { const next = cur.nextSibling; cur.remove(); cur = next; }
  if (!rows.length && empty) {
    const columns = body.closest("table").tHead.rows[0].cells.length;
    body.append(h("tr", {}, h("td", { colspan: columns, class: "muted" }, empty)));
  }
}

/** Rows kept by key and made again only when their data changed: with
 * thousands of services a change redraws one row, not all of them. */
function rowCache(make) {
  let rows = new Map();
  return (items, keyOf) => {
    const next = new Map();
    const out = items.map((item) => {
      const key = keyOf(item);
      const data = JSON.stringify(item);
      const hit = rows.get(key);
      const tr = hit && hit.data === data ? hit.tr : make(item);
      next.set(key, { data, tr });
      return tr;
    });
    rows = next;
    return out;
  };
}

function token() {
  return localStorage.getItem("signpost-token") || "";
}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (token()) headers["X-Consul-Token"] = token();
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  const text = await r.text();
  if (!r.ok && r.status !== 404) {
    throw new Error(`${r.status}: ${text.trim() || r.statusText}`);
  }
  return { status: r.status, index: Number(r.headers.get("X-Consul-Index") || 0), text };
}

/** Calls render(data) now and again whenever the data changes, with
 * blocking queries, until the view changes. */
async function follow(path, render) {
  const mine = generation;
  let index = 0;
  let backoff = 500;
  while (mine === generation) {
    try {
      const sep = path.includes("?") ? "&" : "?";
      const url = index ? `${path}${sep}index=${index}&wait=60s` : path;
      const r = await api(url);
      if (mine !== generation) return;
      live.textContent = `live · index ${r.index}`;
      live.className = "muted";
      if (r.index !== index) {
        index = r.index < index ? 0 : r.index;
        render(r.status === 404 ? null : JSON.parse(r.text || "null"));
      }
      backoff = 500;
    } catch (e) {
      if (mine !== generation) return;
      live.textContent = `disconnected (${e.message}); retrying`;
      live.className = "critical";
      await new Promise((ok) => setTimeout(ok, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  }
}

function badge(state) {
  const s = String(state || "").toLowerCase();
  return h("span", { class: `badge ${s}` }, s || "unknown");
}

function tags(list) {
  return (list || []).map((t) => h("span", { class: "tag" }, t));
}

function show(...nodes) {
  main.replaceChildren(...nodes);
}

function errorBox(message) {
  return h("div", { class: "error", role: "alert" }, message);
}

// --- views ----------------------------------------------------------------

function servicesView() {
  const filter = h("input", {
    type: "search", placeholder: "Filter by name, tag or source", "aria-label": "Filter services",
  });
  const tbody = h("tbody");
  let data = [];
  const rowsOf = rowCache((s) =>
    h("tr", {},
      h("td", {}, h("a", { href: `#/service/${encodeURIComponent(s.Name)}` }, s.Name)),
      h("td", {}, tags(s.Tags)),
      h("td", {}, s.Sources.join(", ")),
      h("td", { class: "counts" },
        s.Passing ? h("span", { class: "passing" }, `${s.Passing} passing`) : null,
        s.Warning ? h("span", { class: "warning" }, `${s.Warning} warning`) : null,
        s.Critical ? h("span", { class: "critical" }, `${s.Critical} critical`) : null,
        s.Maintenance ? h("span", { class: "maintenance" }, `${s.Maintenance} maintenance`) : null)));
  const draw = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = data
      .filter((s) => !q || [s.Name, ...s.Tags, ...s.Sources].some((x) => x.toLowerCase().includes(q)));
    const rows = rowsOf(shown, (s) => s.Name);
    fill(tbody, rows, "No services match.");
  };
  filter.addEventListener("input", draw);
  show(
    h("h1", {}, "Services"),
    h("div", { class: "toolbar" }, filter),
    table(["Service", "Tags", "Source", "Instances"], tbody));
  filter.focus();
  follow("/v1/signpost/ui/services", (d) => { data = d || []; draw(); });
}

function serviceView(name) {
  const body = h("tbody");
  show(
    h("h1", {}, h("a", { href: "#/services" }, "Services"), " / ", name),
    table(["Instance", "Node", "Address", "Tags and meta", "Weights", "Health and checks", "In DNS"], body));
  follow(`/v1/signpost/ui/service/${encodeURIComponent(name)}`, (list) => {
    const rows = (list || []).map((i) => {
      const s = i.Service;
      const meta = Object.entries(s.Meta || {}).map(([k, v]) => h("div", { class: "muted" }, `${k}=${v}`));
      const checks = h("ul", { class: "checks" }, (i.Checks || []).map((c) =>
        h("li", {}, badge(c.Status), " ", c.Name, c.Type ? h("span", { class: "muted" }, ` (${c.Type})`) : null,
          c.Output ? h("div", { class: "output" }, c.Output) : null,
          h("div", { class: "muted" }, `changed at index ${c.ModifyIndex}`))));
      return h("tr", {},
        h("td", {}, s.ID, h("div", { class: "muted" }, i.Source)),
        h("td", {}, i.Node),
        h("td", {}, `${s.Address || i.NodeAddress}:${s.Port}`),
        h("td", {}, tags(s.Tags), meta),
        h("td", {}, `passing ${s.Weights.Passing}, warning ${s.Weights.Warning}`),
        h("td", {}, badge(i.Health), checks),
        h("td", {}, i.InDNS ? h("span", { class: "passing" }, "yes") : h("span", { class: "critical" }, `no: ${i.WhyNot}`)));
    });
    fill(body, rows, "No instances.");
  });
}

function nodesView() {
  const body = h("tbody");
  show(h("h1", {}, "Nodes"), table(["Node", "Address", "Meta", "Services", "Node checks"], body));
  const rowsOf = rowCache((n) =>
    h("tr", {},
      h("td", {}, n.Node),
      h("td", {}, n.Address),
      h("td", {}, Object.entries(n.Meta || {}).map(([k, v]) => h("div", {}, `${k}=${v}`))),
      h("td", {}, n.Services.map((s) => h("div", {}, h("a", { href: `#/service/${encodeURIComponent(s.Service)}` }, s.ID)))),
      h("td", {}, n.Checks.map((c) => h("div", {}, badge(c.Status), " ", c.Name)))));
  follow("/v1/signpost/ui/nodes", (nodes) => fill(body, rowsOf(nodes || [], (n) => n.Node)));
}

function decode(b64) {
  if (!b64) return new Uint8Array();
  const bin = atob(b64);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function describe(bytes) {
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    try {
      return { kind: "JSON", text: JSON.stringify(JSON.parse(text), null, 2), raw: text };
    } catch { return { kind: "text", text, raw: text }; }
  } catch {
    return { kind: "binary", text: `${bytes.length} bytes of binary data`, raw: null };
  }
}

function kvView(prefix) {
  const list = h("ul", { "aria-label": "Keys" });
  const pane = h("div");
  const crumbs = [h("a", { href: "#/kv/" }, "(root)")];
  let acc = "";
  for (const part of prefix.split("/").filter(Boolean)) {
    acc += `${part}/`;
    crumbs.push(" / ", h("a", { href: `#/kv/${acc}` }, part));
  }
  const newKey = h("input", { placeholder: "new key (end with / for a folder)", "aria-label": "New key name" });
  const create = h("button", { onclick: () => {
    const k = newKey.value.trim();
    if (!k) return;
    if (k.endsWith("/")) location.hash = `#/kv/${prefix}${k}`;
    else editKey(pane, `${prefix}${k}`, null);
  } }, "Create");
  const delFolder = h("button", { class: "danger", onclick: async () => {
    if (!prefix || !confirm(`Delete every key under ${prefix}?`)) return;
    try {
      await api(`/v1/kv/${prefix}?recurse`, { method: "DELETE" });
      location.hash = "#/kv/";
    } catch (e) { pane.replaceChildren(errorBox(e.message)); }
  } }, "Delete folder");
  show(h("h1", {}, "Key/Value ", h("span", { class: "muted" }, crumbs)),
    h("div", { class: "toolbar" }, newKey, create, prefix ? delFolder : null),
    h("div", { class: "kv" }, list, pane));
  follow(`/v1/kv/${prefix}?keys&separator=/`, (keys) => {
    const items = (keys || []).filter((k) => k !== prefix).map((k) => {
      const label = k.slice(prefix.length);
      return h("li", {}, k.endsWith("/")
        ? h("a", { href: `#/kv/${k}` }, `📁 ${label}`)
        : h("a", { href: "#", onclick: (e) => { e.preventDefault(); editKey(pane, k); } }, label));
    });
    list.replaceChildren(...items);
    if (!items.length) list.append(h("li", { class: "muted" }, "No keys here."));
  });
}

/** Shows one key; saving uses ?cas= with the index it was read at, so an
 * edit made meanwhile by someone else is never silently overwritten. */
async function editKey(pane, key, entry, note) {
  if (entry === undefined) {
    const r = await api(`/v1/kv/${key}`);
    entry = r.status === 404 ? null : JSON.parse(r.text)[0];
  }
  const bytes = decode(entry && entry.Value);
  const value = describe(bytes);
  const area = h("textarea", { "aria-label": `Value of ${key}` });
  area.value = value.raw === null ? "" : value.raw;
  const status = h("div", { role: "status" }, note ? h("div", { class: "ok" }, note) : null);
  const cas = entry ? entry.ModifyIndex : 0;
  const save = h("button", { class: "primary", onclick: async () => {
    try {
      const r = await api(`/v1/kv/${key}?cas=${cas}`, { method: "PUT", body: area.value });
      if (r.text.trim() === "true") {
        editKey(pane, key, undefined, "Saved.");
      } else {
        status.replaceChildren(errorBox("Not saved: the key changed since you opened it (check-and-set failed). Reload it to see the new value."));
      }
    } catch (e) { status.replaceChildren(errorBox(e.message)); }
  } }, entry ? "Save" : "Create");
  const del = entry ? h("button", { class: "danger", onclick: async () => {
    if (!confirm(`Delete ${key}?`)) return;
    try {
      await api(`/v1/kv/${key}?cas=${cas}`, { method: "DELETE" });
      pane.replaceChildren(h("div", { class: "ok" }, `Deleted ${key}.`));
    } catch (e) { status.replaceChildren(errorBox(e.message)); }
  } }, "Delete") : null;
  pane.replaceChildren(
    h("h2", {}, key),
    entry ? h("p", { class: "muted" }, `${value.kind} · flags ${entry.Flags} · modify index ${entry.ModifyIndex}${entry.Session ? ` · locked by ${entry.Session}` : ""}`) : h("p", { class: "muted" }, "new key"),
    value.kind === "JSON" ? h("pre", {}, value.text) : null,
    value.raw === null ? h("p", {}, value.text) : area,
    h("div", { class: "toolbar" }, value.raw === null ? null : save, del), status);
}

function dnsView() {
  const name = h("input", { id: "dns-name", placeholder: "web.service.consul", "aria-label": "Name", value: sessionStorage.getItem("dns-name") || "" });
  const type = h("select", { "aria-label": "Type" }, ["A", "AAAA", "SRV", "TXT", "ANY", "PTR", "SOA", "NS"].map((t) => h("option", {}, t)));
  const out = h("div");
  const ask = async (e) => {
    if (e) e.preventDefault();
    sessionStorage.setItem("dns-name", name.value);
    try {
      const r = await api(`/v1/signpost/dns?name=${encodeURIComponent(name.value)}&type=${type.value}`);
      const d = JSON.parse(r.text);
      const lines = [`;; status: ${d.Status}${d.Authoritative ? ", authoritative" : ""}`, `;; QUESTION SECTION:`, `;${d.Question}`];
      for (const [title, rs] of [["ANSWER", d.Answer], ["AUTHORITY", d.Authority], ["ADDITIONAL", d.Additional]]) {
        if (rs.length) lines.push("", `;; ${title} SECTION:`, ...rs);
      }
      out.replaceChildren(h("pre", {}, lines.join("\n")));
    } catch (err) { out.replaceChildren(errorBox(err.message)); }
  };
  show(h("h1", {}, "What does DNS answer now?"),
    h("form", { class: "toolbar", onsubmit: ask }, name, type, h("button", { class: "primary", type: "submit" }, "Ask")), out);
  name.focus();
  if (name.value) ask();
}

function sessionsView() {
  const body = h("tbody");
  show(h("h1", {}, "Sessions"),
    table(["Name", "ID", "Node", "Behavior", "TTL", "Lock delay", "Checks"], body));
  follow("/v1/session/list", (list) => {
    const rows = (list || []).map((s) => h("tr", {},
      h("td", {}, s.Name || h("span", { class: "muted" }, "(unnamed)")),
      h("td", {}, h("code", {}, s.ID)),
      h("td", {}, s.Node),
      h("td", {}, s.Behavior),
      h("td", {}, s.TTL || "none"),
      h("td", {}, `${Math.round(s.LockDelay / 1e9)}s`),
      h("td", {}, [...(s.NodeChecks || []), ...((s.ServiceChecks || []).map((c) => c.ID))].join(", "))));
    fill(body, rows, "No sessions.");
  });
}

function queriesView() {
  const body = h("tbody");
  show(h("h1", {}, "Prepared queries"),
    table(["Name", "Service", "Tags", "Only passing", "Template", "Failover", "DNS name"], body));
  follow("/v1/query", (list) => {
    const rows = (list || []).map((q) => {
      const s = q.Service || {};
      const dnsName = `${q.Name || q.ID}.query.consul`;
      return h("tr", {},
        h("td", {}, q.Name || h("span", { class: "muted" }, q.ID)),
        h("td", {}, s.Service || ""),
        h("td", {}, tags(s.Tags)),
        h("td", {}, s.OnlyPassing ? "yes" : "no"),
        h("td", {}, (q.Template && q.Template.Type) || "none"),
        h("td", {}, ((s.Failover && s.Failover.Datacenters) || []).join(", ") || "none"),
        h("td", {}, h("a", { href: "#/dns", onclick: () => sessionStorage.setItem("dns-name", dnsName) }, dnsName)));
    });
    fill(body, rows, "No prepared queries.");
  });
}

// --- routing --------------------------------------------------------------

function route() {
  generation += 1;
  const hash = decodeURIComponent(location.hash.replace(/^#/, "")) || "/services";
  const [, view, ...rest] = hash.split("/");
  const arg = rest.join("/");
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === (view === "service" ? "services" : view));
  }
  if (view === "service") serviceView(arg);
  else if (view === "nodes") nodesView();
  else if (view === "kv") kvView(arg);
  else if (view === "dns") dnsView();
  else if (view === "sessions") sessionsView();
  else if (view === "queries") queriesView();
  else servicesView();
}

document.getElementById("token").value = token();
document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem("signpost-token", document.getElementById("token").value);
  route();
});
window.addEventListener("hashchange", route);
route();
