// The Warden fleet dashboard: reads /api/v1 and draws four views by path:
// "/" overview, "/devices/ID" one device, "/deployments", "/reports".
//
// Authentication: the API token is typed into the login form and kept in this tab's
// sessionStorage, sent only as an "Authorization: Bearer" header to this origin. It
// never appears in a URL (the form is never submitted), so it cannot reach a server
// log, the history or a Referer. Without a token the API is tried anonymously (the
// loopback demo allows anonymous reads); a 401 shows the login form.
"use strict";

const TOKEN_KEY = "warden-fleet-token";
const REFRESH_MS = 5000;
const SVG_NS = "http://www.w3.org/2000/svg";

/** Thrown when the API wants a (different) token. */
class SignInNeeded extends Error {}
/** The fleet answered 404: what the page asked for does not exist. */
class NotFound extends Error {}

// ---- DOM helpers (text is always set as text, never parsed as HTML) ----

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attributes);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttributes(node, attributes);
  return node;
}

function setAttributes(node, attributes) {
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || name === "style") continue;
    if (name === "data") {
      for (const [key, data] of Object.entries(value)) node.dataset[key] = String(data);
    } else {
      node.setAttribute(name, String(value));
    }
  }
}

function table(id, headings, rows) {
  const t = el("table", { id: id || null });
  const head = t.createTHead().insertRow();
  for (const heading of headings) head.appendChild(el("th", {}, heading));
  const body = t.createTBody();
  for (const row of rows) body.appendChild(row);
  // An empty table says so, rather than looking like a table that failed to load.
  if (rows.length === 0) {
    body.appendChild(el("tr", { class: "empty" }, el("td", { class: "muted", colspan: headings.length }, "none")));
  }
  return t;
}

function row(data, ...cells) {
  const tr = el("tr", { data });
  for (const cell of cells) {
    const isCell = cell instanceof Element && (cell.tagName === "TD" || cell.tagName === "TH");
    tr.appendChild(isCell ? cell : el("td", {}, cell));
  }
  return tr;
}

function number(field, value) {
  return el("td", { class: "number", data: { field } }, value);
}

/**
 * A number as a person reads it: with `decimals` places when the point's config sets
 * them (the unit reports them in its twin), else with float noise from the unit's
 * scaling removed (73.10000000000001 is shown as 73.1), at most 10 significant digits.
 */
function formatNumber(value, decimals) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
  if (Number.isInteger(decimals) && decimals >= 0) return value.toFixed(decimals);
  return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(10)));
}

function time(ms) {
  return ms === null || ms === undefined ? "never" : new Date(ms).toLocaleString();
}

function deviceLink(id) {
  return el("a", { href: "/devices/" + encodeURIComponent(id) }, id);
}

// ---- API ----

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(path, {
    headers: token ? { Authorization: "Bearer " + token } : {},
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  if (response.status === 401) {
    throw new SignInNeeded(token ? "The fleet refused this token." : "");
  }
  if (response.status === 404) throw new NotFound(path);
  if (response.status === 429) {
    throw new SignInNeeded("Too many failed token attempts from this address: wait a minute.");
  }
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error; } catch (_) { /* not JSON */ }
    throw new Error(path + ": " + response.status + " " + message);
  }
  return response.json();
}

/** A reading as shown: the text of a string point, else its number (see formatNumber). */
function shownValue(reading, decimals) {
  return reading.text !== undefined && reading.text !== null ? reading.text : formatNumber(reading.value, decimals);
}

// ---- Charts ----

/**
 * Where consecutive readings are further apart than this many times their median
 * spacing, the unit was not reporting: the chart leaves a gap rather than drawing a
 * ramp across the outage.
 */
const GAP_FACTOR = 5;

/** `points` (sorted by time) split where the spacing shows an outage. */
function segments(points) {
  const steps = points.slice(1).map((p, i) => p.ts_ms - points[i].ts_ms).sort((a, b) => a - b);
  const median = steps.length ? steps[Math.floor(steps.length / 2)] : 0;
  const parts = [];
  let current = [];
  points.forEach((p, i) => {
    if (i > 0 && median > 0 && p.ts_ms - points[i - 1].ts_ms > GAP_FACTOR * median) {
      parts.push(current);
      current = [];
    }
    current.push(p);
  });
  if (current.length) parts.push(current);
  return parts;
}

/**
 * A line chart of readings (any order) as an SVG element, over `span` ({from, to} in
 * ms: the same for every chart of a page, so they line up) or the readings' own span.
 */
function lineChart(readings, unit, span, decimals) {
  const points = readings.slice().sort((a, b) => a.ts_ms - b.ts_ms);
  const width = 380, height = 140, left = 48, right = 8, top = 8, bottom = 22;
  const chart = svg("svg", {
    class: "line-chart", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", data: { count: points.length, from: span ? span.from : "", to: span ? span.to : "" },
  });
  if (points.length === 0) return chart;
  let t0 = span ? span.from : points[0].ts_ms, t1 = span ? span.to : points[points.length - 1].ts_ms;
  let v0 = Math.min(...points.map((p) => p.value)), v1 = Math.max(...points.map((p) => p.value));
  if (t1 === t0) { t0 -= 1; t1 += 1; }
  if (v1 === v0) { v0 -= 1; v1 += 1; }
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => height - bottom - ((v - v0) / (v1 - v0)) * (height - top - bottom);
  chart.append(
    svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }),
    svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }),
  );
  const label = (text, attributes) => {
    const node = svg("text", attributes);
    node.textContent = text;
    chart.appendChild(node);
  };
  label(`${formatNumber(v1, decimals)} ${unit}`, { x: 2, y: top + 8 });
  label(`${formatNumber(v0, decimals)} ${unit}`, { x: 2, y: height - bottom });
  label(new Date(t0).toLocaleTimeString(), { x: left, y: height - 6 });
  label(new Date(t1).toLocaleTimeString(), { x: width - right, y: height - 6, "text-anchor": "end" });
  for (const part of segments(points)) {
    chart.appendChild(svg("polyline", {
      class: "line",
      points: part.map((p) => `${x(p.ts_ms).toFixed(1)},${y(p.value).toFixed(1)}`).join(" "),
    }));
  }
  if (points.length <= 100) {
    for (const p of points) {
      chart.appendChild(svg("circle", { class: "dot", cx: x(p.ts_ms).toFixed(1), cy: y(p.value).toFixed(1), r: 2 }));
    }
  }
  return chart;
}

/** Bars of report counts per time bucket between `since` and `until`. */
function bucketChart(series, since, until, bucketMs) {
  const width = 220, height = 36;
  const chart = svg("svg", {
    class: "bucket-chart", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", data: { buckets: series.length },
  });
  chart.appendChild(svg("line", { class: "axis", x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5 }));
  const max = Math.max(1, ...series.map((b) => b.count));
  const span = Math.max(1, until - since);
  const barWidth = Math.max(2, (bucketMs / span) * width);
  for (const bucket of series) {
    const barHeight = Math.max(1, (bucket.count / max) * (height - 2));
    chart.appendChild(svg("rect", {
      class: "bar-reports",
      x: Math.min(width - barWidth, ((bucket.start_ms - since) / span) * width).toFixed(1),
      y: (height - barHeight).toFixed(1), width: barWidth.toFixed(1), height: barHeight.toFixed(1),
    }));
  }
  return chart;
}

/** A stacked bar of a wave's devices by outcome. */
function waveBar(wave) {
  const width = 200, height = 14;
  const chart = svg("svg", { class: "wave-bar", width, height, viewBox: `0 0 ${width} ${height}` });
  let x = 0;
  for (const part of ["succeeded", "failed", "crashed", "in_progress", "withheld"]) {
    const share = wave.targeted ? (wave[part] / wave.targeted) * width : 0;
    if (share > 0) {
      chart.appendChild(svg("rect", { class: "bar-" + part.replace("_", "-"), x: x.toFixed(1), y: 0, width: share.toFixed(1), height }));
    }
    x += share;
  }
  return chart;
}

// ---- Views ----

/** Display order of statuses; others the fleet reports follow, by name. */
const ORDER = ["trusted", "unverified", "untrusted", "unknown", "revoked", "online", "offline"];

function statusCards(id, counts, attribute, classPrefix) {
  const cards = el("div", { class: "cards", id });
  const rank = (name) => (ORDER.includes(name) ? ORDER.indexOf(name) : ORDER.length);
  const names = Object.keys(counts).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  for (const name of names) {
    const count = counts[name];
    cards.appendChild(el("div", { class: "card " + classPrefix + name, data: { [attribute]: name } },
      el("div", { class: "count" }, count), el("div", { class: "label" }, name)));
  }
  return cards;
}

function deploymentRows(deployments) {
  return deployments.map((d) => {
    const wave = d.waves.find((w) => w.wave === d.current_wave) || { succeeded: 0, targeted: 0 };
    return row({ deployment: d.id },
      el("td", {}, el("a", { href: "/deployments#" + encodeURIComponent(d.id) }, d.id)),
      `${d.product} ${d.version}`, d.group,
      el("td", { class: "state-" + d.state }, d.state),
      `wave ${d.current_wave + 1} of ${d.waves.length}: ${wave.succeeded} of ${wave.targeted} confirmed`);
  });
}

/** Devices per page of the overview's device table. */
const DEVICE_PAGE = 100;

/** The overview's device list position, from the URL (`/?prefix=wd-1&page=2`). */
function devicePosition() {
  const query = new URLSearchParams(location.search);
  const page = Math.max(1, Number.parseInt(query.get("page") || "1", 10) || 1);
  return { prefix: query.get("prefix") || "", page };
}

function pageLink(prefix, page, label) {
  const query = new URLSearchParams();
  if (prefix) query.set("prefix", prefix);
  query.set("page", String(page));
  return el("a", { href: "/?" + query.toString(), class: "pager" }, label);
}

async function overview() {
  const { prefix, page } = devicePosition();
  const [summary, devices] = await Promise.all([
    api("/api/v1/dashboard/summary"),
    // One more than a page: whether there is a next one.
    api(`/api/v1/dashboard/devices?prefix=${encodeURIComponent(prefix)}` +
      `&offset=${(page - 1) * DEVICE_PAGE}&limit=${DEVICE_PAGE + 1}`),
  ]);
  const shown = devices.slice(0, DEVICE_PAGE);
  const first = (page - 1) * DEVICE_PAGE + 1;
  // A GET form: the prefix goes into this page's URL (never the token).
  const search = el("form", { id: "device-search", method: "get", action: "/" },
    el("label", { for: "device-prefix" }, "Device ID starts with "),
    el("input", { id: "device-prefix", name: "prefix", value: prefix, autocomplete: "off" }),
    el("button", { type: "submit" }, "Find"));
  const pager = el("p", { id: "device-pager", class: "muted" },
    shown.length ? `devices ${first}–${first + shown.length - 1}` : "no device matches", " ",
    page > 1 ? pageLink(prefix, page - 1, "◀ previous") : null, " ",
    devices.length > DEVICE_PAGE ? pageLink(prefix, page + 1, "next ▶") : null);
  return [
    el("h2", {}, `Devices (${summary.registered} registered)`),
    statusCards("status-counts", summary.by_status, "status", "status-"),
    statusCards("connectivity", summary.connectivity, "connectivity", ""),
    el("h2", {}, "Image versions"),
    table("versions", ["product", "version", "devices"], summary.by_version.map((v) =>
      row({ version: v.product + "/" + v.image_version }, v.product, v.image_version, number("devices", v.devices)))),
    el("h2", {}, "Deployments in progress"),
    summary.deployments_in_progress.length
      ? table("deployments-in-progress", ["deployment", "image", "group", "state", "progress"], deploymentRows(summary.deployments_in_progress))
      : el("p", { class: "muted", id: "deployments-in-progress" }, "None."),
    el("h2", {}, "Devices"),
    search,
    pager,
    table("devices", ["device", "product", "group", "version", "status", "connection", "last seen"],
      shown.map((d) => row({ device: d.device_id },
        el("td", {}, deviceLink(d.device_id)), d.product, d.group, d.image_version,
        el("td", { class: "status-" + d.status, data: { field: "status" } }, d.registered ? d.status : "not registered"),
        el("td", { class: d.online ? "online" : "muted", data: { field: "connection" } }, d.online ? "online" : "offline"),
        time(d.last_seen_ms)))),
    el("p", { class: "muted" }, "Latest values and telemetry charts: on each device's page."),
  ];
}

async function devicePage(id) {
  let detail;
  try {
    detail = await api("/api/v1/dashboard/devices/" + encodeURIComponent(id));
  } catch (error) {
    if (!(error instanceof NotFound)) throw error;
    return [el("h2", { id: "not-found" }, "No device " + id),
      el("p", {}, "The fleet knows no device with this ID: it is not registered and never sent telemetry. ",
        el("a", { href: "/" }, "All devices"))];
  }
  const r = detail.registered;
  const field = (name, label, value, cls) =>
    row({ field: name }, el("th", {}, label), el("td", { class: cls }, value));
  const identity = [
    field("device_id", "device", detail.device_id),
    field("connection", "connection", detail.online ? "online" : "offline", detail.online ? "online" : "muted"),
    field("last_seen", "last seen", time(detail.seen ? detail.seen.last_seen_ms : r && r.last_seen_ms)),
  ];
  if (r) {
    const status = r.revoked ? "revoked" : r.attestation;
    identity.push(
      field("serial", "serial", r.serial), field("product", "product", r.product),
      field("group", "group", r.group), field("image_version", "image version", r.image_version),
      field("policy_version", "policy version", r.policy_version === null ? "none reported" : r.policy_version),
      field("attestation", "attestation", status, "status-" + status),
      field("attestation_detail", "attestation detail", r.attestation_detail || "—"),
      field("attested", "attested", time(r.attested_ms)),
      field("fingerprint", "certificate SHA-256", r.fingerprint));
    const c = detail.certificate;
    if (c) {
      identity.push(
        field("certificate_expires", "certificate valid until", time(c.not_after_ms)),
        field("certificate_standing", "certificate", c.standing, "status-" + c.standing));
      if (c.refused_reason) {
        identity.push(field("certificate_refused", "certificate refused",
          `${time(c.refused_ms)}: ${c.refused_reason}`, "status-expired"));
      }
    }
    // The release-key revocation list the device holds against the fleet's newest.
    const l = detail.revocation_list;
    if (l && (l.fleet_sequence !== null || l.held_sequence !== null)) {
      const held = l.held_sequence === null ? "none reported" : "sequence " + l.held_sequence;
      const newest = l.fleet_sequence === null ? "" : ` (fleet's newest: ${l.fleet_sequence})`;
      identity.push(field("revocation_list", "release-key revocation list", held + newest,
        l.current ? "status-trusted" : "status-unverified"));
    }
    identity.push(field("registered", "registered", time(r.registered_ms)));
  } else {
    identity.push(field("registered", "registered", "no (sends telemetry, not in the registry)"),
      field("attestation", "attestation", "not attested: only registered devices are", "status-unknown"));
  }
  const identityTable = el("table", { id: "identity" });
  const body = identityTable.createTBody();
  for (const tr of identity) body.appendChild(tr);
  const decimals = (point) => (detail.point_decimals || {})[point];
  const view = [el("h2", {}, "Device " + detail.device_id), identityTable, el("h2", {}, "Latest values"),
    table("latest-values", ["point", "value", "unit", "read at"], detail.latest.map((v) =>
      row({ point: v.point }, v.point, el("td", { class: "value" }, shownValue(v, decimals(v.point))), v.unit, time(v.ts_ms)))),
    el("h2", {}, "Telemetry")];
  const charts = el("div", { class: "charts", id: "charts" });
  // String points (text, no number) have no chart.
  const numeric = detail.latest.filter((v) => v.text === undefined || v.text === null);
  const series = await Promise.all(numeric.map((v) =>
    api(`/api/v1/devices/${encodeURIComponent(id)}/telemetry?point=${encodeURIComponent(v.point)}&limit=500`)));
  // One time span for the page: every chart from the earliest to the latest reading shown.
  const times = series.flatMap((s) => s.readings.map((r) => r.ts_ms));
  const span = times.length ? { from: Math.min(...times), to: Math.max(...times) } : null;
  numeric.forEach((v, index) => {
    charts.appendChild(el("figure", { class: "chart", data: { point: v.point } },
      el("figcaption", {}, `${v.point} (${series[index].readings.length} readings)`),
      lineChart(series[index].readings, v.unit, span, decimals(v.point))));
  });
  if (detail.latest.length === 0) charts.appendChild(el("p", { class: "muted" }, "No telemetry yet."));
  view.push(charts, el("h2", {}, "Recent failure reports"),
    table("device-reports", ["when", "compartment", "kind", "version", "signature", "message"],
      detail.reports.map((rep) => row({ report: rep.id }, time(rep.ts_ms), rep.compartment, rep.kind,
        rep.image_version, rep.signature, rep.message))));
  return view;
}

async function deploymentsPage() {
  const deployments = await api("/api/v1/dashboard/deployments");
  const view = [el("h2", {}, `Deployments (${deployments.length})`)];
  if (deployments.length === 0) view.push(el("p", { class: "muted" }, "No deployment yet."));
  for (const d of deployments) {
    const thresholds = `success ≥ ${d.success_threshold}, halt at failures ≥ ${d.failure_threshold}`;
    view.push(el("section", { class: "deployment", id: d.id, data: { deployment: d.id, state: d.state } },
      el("h3", {}, `${d.product} ${d.version} → ${d.group} `,
        el("span", { class: "state state-" + d.state }, d.state)),
      el("p", { class: "muted" }, `${d.id}, created by ${d.created_by} at ${time(d.created_ms)}; ${thresholds}`),
      el("p", { class: "detail" }, `${d.last_event}: ${d.detail}`),
      table(null, ["wave", "status", "targeted", "offered", "confirmed", "failed", "crashed", "in progress", "withheld", ""],
        d.waves.map((w) => row({ wave: w.wave },
          String(w.wave + 1), el("td", { class: "wave-" + w.status, data: { field: "status" } }, w.status),
          number("targeted", w.targeted), number("offered", w.offered), number("succeeded", w.succeeded),
          number("failed", w.failed), number("crashed", w.crashed), number("in_progress", w.in_progress),
          number("withheld", w.withheld), el("td", {}, waveBar(w)))))));
  }
  return view;
}

async function reportsPage() {
  const bucketMs = 3600000;
  const until = Date.now();
  const since = until - 7 * 24 * bucketMs;
  const groups = await api(`/api/v1/dashboard/report-groups?since_ms=${since}&bucket_ms=${bucketMs}`);
  return [
    el("h2", {}, `Failure-report groups, last 7 days (${groups.length})`),
    table("report-groups", ["signature", "compartment", "kind", "reports", "devices", "versions", "first", "latest", "per hour", "latest message"],
      groups.map((g) => row({ signature: g.signature },
        g.signature, g.compartment, g.kind, number("count", g.count), number("devices", g.devices),
        el("td", { data: { field: "versions" } }, g.versions.map((v) => `${v.image_version} ×${v.count}`).join(", ")),
        time(g.first_ms), time(g.last_ms), el("td", {}, bucketChart(g.series, since, until, bucketMs)), g.message))),
  ];
}

// ---- Routing, sign-in, refresh ----

function currentView() {
  const path = location.pathname;
  if (path.startsWith("/devices/")) {
    const id = decodeURIComponent(path.slice("/devices/".length));
    return { nav: "nav-overview", draw: () => devicePage(id) };
  }
  if (path === "/deployments") return { nav: "nav-deployments", draw: deploymentsPage };
  if (path === "/reports") return { nav: "nav-reports", draw: reportsPage };
  return { nav: "nav-overview", draw: overview };
}

let drawing = false;

async function refresh() {
  const login = document.getElementById("login");
  if (drawing || !login.hidden) return;
  // Not while someone types a device ID: the redraw would replace the field.
  if (document.activeElement && document.activeElement.id === "device-prefix") return;
  drawing = true;
  const status = document.getElementById("updated");
  try {
    const nodes = await currentView().draw();
    document.getElementById("view").replaceChildren(...nodes);
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.className = "muted";
    document.getElementById("logout").hidden = !sessionStorage.getItem(TOKEN_KEY);
  } catch (error) {
    if (error instanceof SignInNeeded) {
      sessionStorage.removeItem(TOKEN_KEY);
      document.getElementById("view").replaceChildren();
      document.getElementById("logout").hidden = true;
      document.getElementById("login-error").textContent = error.message;
      status.textContent = "sign in to see the fleet";
      login.hidden = false;
      document.getElementById("token").focus();
    } else {
      status.textContent = "fleet API unreachable or failing: " + error.message;
      status.className = "error";
    }
  } finally {
    drawing = false;
  }
}

function start() {
  document.getElementById(currentView().nav).classList.add("current");
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    const token = input.value.trim();
    input.value = "";
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    document.getElementById("login").hidden = true;
    document.getElementById("login-error").textContent = "";
    refresh();
  });
  document.getElementById("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
