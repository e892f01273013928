/**
 * The status page's files: HTML, CSS and a little JavaScript, kept here as strings so that they
 * ship inside the package's dist/ (no CDN, no build step for assets). The script asks
 * `GET /v1/dbs` every few seconds and redraws the table; downloads are plain navigations to
 * `GET /v1/dbs/:db/backup`, so a large file streams to disk instead of through memory.
 */

/** Seconds between refreshes of the table. */
export const REFRESH_SECONDS = 5;

/** The page's stylesheet, served at /ui/style.css. */
export const STYLE_CSS = `
:root { color-scheme: light dark; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --line: #8884; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; }
h1 { font-size: 1.3rem; margin: 0 0 .2rem; }
.sub { color: #888; margin-bottom: 1rem; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: .4rem .5rem; text-align: left; vertical-align: top; }
th { font-weight: 600; white-space: nowrap; }
td small { color: #888; display: block; }
.health { font-weight: 600; white-space: nowrap; }
.health.ok { color: var(--ok); } .health.warn { color: var(--warn); } .health.bad { color: var(--bad); }
.errors { max-width: 22rem; font-size: 12px; }
.actions input { width: 7rem; } .actions input.time { width: 12rem; }
.actions form { display: flex; flex-wrap: wrap; gap: .3rem; margin: 0 0 .3rem; }
.message { font-size: 12px; display: block; }
#banner { color: var(--bad); font-weight: 600; }
.login { max-width: 24rem; margin: 4rem auto; display: grid; gap: .6rem; }
.login input { font: inherit; padding: .4rem; }
`;

/** The page's script, served at /ui/app.js. */
export const APP_JS = `"use strict";
const REFRESH_MS = ${REFRESH_SECONDS * 1000};
const rows = new Map();
const el = (tag, props = {}, ...children) => {
  const e = Object.assign(document.createElement(tag), props);
  for (const c of children) e.append(c);
  return e;
};
const bytes = (n) => {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
};
const ago = (iso) => {
  if (!iso) return "";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  return s < 60 ? s + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : s < 172800 ? Math.round(s / 3600) + " h ago" : Math.round(s / 86400) + " d ago";
};
const when = (ms) => (ms === undefined ? "sealed" : new Date(ms).toISOString().replace(".000", ""));
const plural = (n, word) => n + " " + word + (n === 1 ? "" : "s");

/** ok, warn or bad, with why: the same reading an operator would make of the other cells. */
function health(s) {
  if (s.damage) return ["bad", "damaged after version " + s.damage.intactVersion];
  if (s.lastVerify && !s.lastVerify.ok) return ["bad", "last verify failed"];
  const failing = s.replicas.filter((r) => r.error);
  if (failing.length) return ["bad", plural(failing.length, "replica") + " failing"];
  if (s.replicas.some((r) => r.lagSeconds > 60)) return ["warn", "a replica lags"];
  const recent = s.errors.filter((e) => Date.now() - Date.parse(e.at) < 15 * 60_000);
  if (recent.length) return ["warn", plural(recent.length, "error") + " in 15 min"];
  if (s.compacting) return ["ok", "ok (compacting)"];
  return ["ok", "ok"];
}

function cells(s) {
  const settings = s.settings || {};
  const [level, why] = health(s);
  const gens = s.generations.length;
  return [
    [el("strong", { textContent: s.name }), el("small", { textContent: s.backend })],
    [el("span", { className: "health " + level, textContent: why })],
    [String(s.version), el("small", { textContent: s.headTimestamp ? when(s.headTimestamp) : "empty" })],
    [s.lastAck ? ago(s.lastAck) : "none yet", el("small", { textContent: s.lastAck ? s.lastAck : "since the daemon started" })],
    s.version === 0 ? ["nothing yet"] : ["versions " + s.firstVersion + ".." + s.version,
      el("small", { textContent: when(s.generations[0] && s.generations[0].firstTimestamp) + " .. " + when(s.headTimestamp) })],
    [String(gens), el("small", { textContent: gens > 1 ? "bases " + s.generations.map((g) => g.baseVersion).join(", ") : "live only" })],
    [bytes(s.bytes), el("small", { textContent: plural(s.records, "record") })],
    [(settings.compression || "none"), el("small", { textContent: settings.encrypted ? "encrypted" : "not encrypted" })],
    s.replicas.length === 0 ? ["none"] : s.replicas.map((r) =>
      el("small", { textContent: (r.error ? "FAILING " : "") + plural(r.lagVersions, "version") + " behind (" + r.lagSeconds.toFixed(1) + " s) " + r.location })),
    s.lastCompaction ? [ago(s.lastCompaction.at), el("small", { textContent: "base " + s.lastCompaction.baseVersion + ", " + s.lastCompaction.reason })] : ["not since start"],
    s.lastVerify ? [(s.lastVerify.ok ? "ok, " : "FAILED, ") + ago(s.lastVerify.at), el("small", { textContent: s.lastVerify.at })] : ["not since start"],
    s.errors.length === 0 ? ["none"] : s.errors.slice(-3).reverse().map((e) => el("small", { textContent: e.at + " " + e.code + ": " + e.message })),
  ];
}

function actions(name) {
  const message = el("span", { className: "message", role: "status" });
  const version = el("input", { name: "version", type: "number", min: "1", placeholder: "version", title: "a version to download (empty: the head)" });
  const time = el("input", { name: "time", className: "time", placeholder: "or time, ISO-8601", title: "a moment to download, like 2026-11-22T03:00:00Z" });
  const download = el("form", { className: "download" }, version, time, el("button", { type: "submit", textContent: "Download backup" }));
  download.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    if (version.value && time.value) return void (message.textContent = "give a version or a time, not both");
    if (version.value) q.set("version", version.value);
    if (time.value) {
      const ms = Date.parse(time.value);
      if (Number.isNaN(ms)) return void (message.textContent = "not a time: " + time.value);
      q.set("time", new Date(ms).toISOString());
    }
    message.textContent = "restoring " + (q.toString() || "the head") + " for download…";
    // A navigation to an attachment downloads it and leaves this page where it is.
    location.assign("/v1/dbs/" + encodeURIComponent(name) + "/backup" + (q.toString() ? "?" + q : ""));
  });
  const verify = el("button", { type: "button", textContent: "Verify now" });
  verify.addEventListener("click", async () => {
    verify.disabled = true;
    message.textContent = "verifying (a test restore)…";
    try {
      const r = await fetch("/v1/dbs/" + encodeURIComponent(name) + "/verify", { method: "POST", headers: { "x-tidemark-csrf": "1" } });
      const body = await r.json();
      if (r.status === 429) message.textContent = body.error + "; retry in " + r.headers.get("retry-after") + " s";
      else if (body.ok) message.textContent = "verify passed: " + plural(body.records, "record") + ", restored version " + (body.restored ? body.restored.version : "-");
      else message.textContent = "verify failed: " + (body.problems ? body.problems.map((p) => p.message).join("; ") : body.error);
    } catch (e) {
      message.textContent = "verify could not run: " + e.message;
    } finally {
      verify.disabled = false;
      refresh();
    }
  });
  return [download, verify, message];
}

function render(body) {
  const tbody = document.getElementById("dbs");
  const seen = new Set();
  for (const s of body.databases) {
    seen.add(s.name);
    let row = rows.get(s.name);
    if (!row) {
      const tr = el("tr", { id: "db-" + s.name });
      const data = [];
      for (let i = 0; i < 12; i++) { const td = el("td"); data.push(td); tr.append(td); }
      tr.append(el("td", { className: "actions" }, ...actions(s.name)));
      row = { tr, data };
      rows.set(s.name, row);
      tbody.append(tr);
    }
    cells(s).forEach((content, i) => row.data[i].replaceChildren(...content));
    row.data[11].className = "errors";
  }
  for (const [name, row] of rows) if (!seen.has(name)) { row.tr.remove(); rows.delete(name); }
  const failed = (body.failed || []).map((f) => f.name + ": " + f.code + " " + f.error);
  document.getElementById("banner").textContent = failed.length ? "failed to open: " + failed.join("; ") : "";
}

async function refresh() {
  try {
    const r = await fetch("/v1/dbs", { headers: { accept: "application/json" } });
    if (r.status === 401) return void location.reload();
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.status);
    render(body);
    document.getElementById("updated").textContent = "updated " + new Date().toISOString().replace(/\\.\\d+Z$/, "Z") + ", every ${REFRESH_SECONDS} s";
  } catch (e) {
    document.getElementById("banner").textContent = "cannot reach the daemon: " + e.message;
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
`;

const HEAD = `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><link rel="stylesheet" href="/ui/style.css">`;

const COLUMNS = [
  "Database",
  "Health",
  "Head",
  "Last ack",
  "Restorable",
  "Generations",
  "Size",
  "Storage",
  "Replicas",
  "Last compaction",
  "Last verify",
  "Recent errors",
  "Actions",
];

/** The status page itself. */
export function statusPageHtml(version: string): string {
  return `${HEAD}<title>tidemark status</title><script src="/ui/app.js" defer></script></head><body>
<h1>tidemark</h1><div class="sub">version ${escapeHtml(version)} · <span id="updated">loading…</span></div>
<div id="banner" role="alert"></div>
<table><thead><tr>${COLUMNS.map((c) => `<th>${c}</th>`).join("")}</tr></thead><tbody id="dbs"></tbody></table>
</body></html>`;
}

/** The login form shown to a browser without the key; `wrong` after a wrong key. */
export function loginPageHtml(wrong: boolean): string {
  return `${HEAD}<title>tidemark: sign in</title></head><body>
<form class="login" method="post" action="/login">
<h1>tidemark</h1>
<label for="key">API key (tcp.apiKey in the daemon's configuration)</label>
<input id="key" name="key" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
${wrong ? '<div id="banner" role="alert">wrong API key</div>' : ""}
</form></body></html>`;
}

/** An error shown to a browser that navigated (a download that was refused). */
export function errorPageHtml(status: number, message: string, hint: string | undefined): string {
  return `${HEAD}<title>tidemark: ${status}</title></head><body>
<h1>${status}: ${escapeHtml(message)}</h1>${hint ? `<p>${escapeHtml(hint)}</p>` : ""}<p><a href="/">back to the status page</a></p></body></html>`;
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
