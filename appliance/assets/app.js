// The status page's only script (served from /static, so the CSP needs no inline code).
"use strict";

let csrfToken = null;

function row(table, cells, tag) {
  const tr = table.insertRow();
  for (const c of cells) {
    const td = document.createElement(tag || "td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c;
    tr.appendChild(td);
  }
  return tr;
}

function text(id, value) { document.getElementById(id).textContent = value; }

// A small SVG polyline of recent values, scaled to its own min and max.
function sparkline(values) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "trend");
  svg.setAttribute("viewBox", "0 0 120 24");
  if (values.length >= 2) {
    const min = Math.min(...values), max = Math.max(...values);
    const span = max - min || 1;
    const points = values.map((v, i) =>
      (i * 120 / (values.length - 1)).toFixed(1) + "," + (22 - (v - min) * 20 / span).toFixed(1));
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.appendChild(line);
  }
  return svg;
}

/**
 * A point's last value as shown: a number with the decimal places its config sets
 * (`decimals`), else as read; a number that is not finite arrives as null.
 */
function shownValue(p) {
  const value = p.last.value;
  if (value === null) return "not a number";
  if (typeof value === "number" && Number.isInteger(p.decimals)) return value.toFixed(p.decimals);
  return String(value);
}

function when(ms) { return ms ? new Date(ms).toLocaleString() : ""; }

function showUpdates(u) {
  text("update-offer", u.offer
    ? "Offered: version " + u.offer.version + ", may be deferred until " + when(u.offer.window_ends_ms)
    : "No update offered.");
  const parts = [];
  if (u.deferred_until_ms) parts.push("updates deferred until " + when(u.deferred_until_ms));
  if (u.allowed_version) parts.push("version " + u.allowed_version + " allowed");
  if (!u.deferred_until_ms && !u.allowed_version && u.decided_at_ms) parts.push("updates allowed");
  const decision = document.getElementById("update-decision");
  decision.textContent = parts.join("; ") || "No decision yet.";
  decision.dataset.deferredUntil = u.deferred_until_ms || "";
}

// "running a: 1.4.0 confirmed (primary); b: 1.5.0 trial — 1 boot(s) on trial, 0 crash(es)"
function slotsText(slots) {
  if (!slots) return "no [updates] state directory configured";
  if (slots.error) return slots.error;
  const parts = slots.slots.map(slot =>
    slot.slot + ": " + (slot.version ? slot.version + " " : "") + slot.status +
    (slot.slot === slots.primary ? " (primary)" : "") +
    (slot.slot === slots.running ? " (running)" : "") +
    (slot.detail ? " — " + slot.detail : ""));
  return parts.join("; ");
}

// The fleet's last verdict (it enforces it; the unit only shows it), then what the
// unit answered.
function attestationText(a) {
  if (!a || !a.last_answered_ms) return "no challenge from the fleet yet";
  const v = a.verdict;
  const verdict = !v ? "no verdict from the fleet yet"
    : (v.trusted
      ? "trusted by the fleet" + (v.release ? " (release " + v.release + ")" : "")
      : "NOT trusted by the fleet: " + v.detail) + ", " + when(v.received_ms);
  return verdict + "; last challenge answered " + when(a.last_answered_ms) + ", " +
    (a.last_error ? "without a quote: " + a.last_error : "with a quote") +
    " (" + a.answered + " since start)";
}

// The device certificate: where it stands (renewal is due once less than a third of
// its validity remains; the fleet refuses it once expired) and until when it is valid.
function certificateText(c) {
  if (!c) return "no link configured";
  if (c.error) return "unreadable: " + c.error;
  const days = c.days_left == null ? "" : ", " + c.days_left + " day" + (c.days_left === 1 ? "" : "s") + " left";
  return c.standing + " (valid until " + c.not_after + days + ")" +
    (c.renewal ? "; renewal " + c.renewal : "");
}

let reportsById = new Map();

function showReports(r) {
  const table = document.getElementById("reports-table");
  table.replaceChildren();
  reportsById = new Map();
  if (!r) { text("reports-summary", "no [reports] ring configured"); return; }
  if (r.error) { text("reports-summary", "cannot read the reports: " + r.error); return; }
  text("reports-summary", r.total
    ? r.total + " in the ring" + (r.total > r.newest.length ? ", newest " + r.newest.length + " shown" : "")
    : "none");
  if (!r.newest.length) return;
  row(table, ["#", "time", "compartment", "kind", "message", "uploaded"], "th");
  for (const report of r.newest) {
    reportsById.set(String(report.id), report);
    const link = document.createElement("a");
    link.href = "#report-" + report.id;
    link.textContent = String(report.id);
    link.addEventListener("click", (e) => { e.preventDefault(); showReport(report.id); });
    const tr = row(table, [link, when(report.created_ms), report.compartment, report.kind,
      report.message, report.uploaded ? "yes" : "not yet"]);
    tr.dataset.report = String(report.id);
  }
  const open = document.getElementById("report-detail").dataset.report;
  if (open && reportsById.has(open)) showReport(open);
}

function showReport(id) {
  const report = reportsById.get(String(id));
  const pane = document.getElementById("report-detail");
  if (!report) { pane.hidden = true; return; }
  pane.dataset.report = String(report.id);
  text("report-detail-title", "Report " + report.id);
  text("report-detail-compartment", report.compartment);
  text("report-detail-kind", report.kind);
  text("report-detail-time", when(report.created_ms));
  text("report-detail-image", report.image_version);
  text("report-detail-uploaded", report.uploaded ? "yes" : "not yet");
  text("report-detail-signature", report.signature);
  text("report-detail-message", report.message);
  text("report-detail-backtrace", report.detail);
  pane.hidden = false;
}

async function refresh() {
  try {
    const response = await fetch("/api/status", { credentials: "same-origin" });
    if (response.status === 401) { window.location.assign("/login"); return; }
    if (!response.ok) throw new Error("HTTP " + response.status);
    const s = await response.json();
    text("device", s.device_id);
    text("overview-device", s.device_id);
    text("overview-version", s.software_version);
    text("overview-slots", slotsText(s.image_slots));
    text("overview-attestation", attestationText(s.link.attestation));
    text("overview-certificate", certificateText(s.device_certificate));
    const link = document.getElementById("link");
    // The summary names the cause whenever the link is not connected.
    link.textContent = s.link_summary;
    link.className = "state-" + s.link.state;
    text("link-detail",
      (s.last_ack_age_secs === null ? "no ack since start" : "last ack " + s.last_ack_age_secs + " s ago") +
      "; batches queued " + s.link.batches_queued + ", acknowledged " + s.link.batches_acknowledged);
    text("outbox-depth", s.link.outbox.depth + " batches (" + s.link.outbox.bytes + " bytes)" +
      (s.link.outbox.dropped_oldest ? ", dropped " + s.link.outbox.dropped_oldest : ""));

    const root = document.getElementById("bridges");
    root.replaceChildren();
    const denials = document.getElementById("denials-table");
    denials.replaceChildren();
    row(denials, ["bridge", "denied requests", "last error"], "th");
    for (const b of s.bridges) {
      const h = document.createElement("h3");
      h.textContent = b.name + " — " + b.address + (b.health.connected ? " (connected)" : " (not connected)");
      const counters = document.createElement("p");
      counters.className = "muted";
      counters.textContent = "reads " + b.health.reads_ok + ", writes " + b.health.writes_ok +
        ", errors " + b.health.errors + ", timeouts " + b.health.timeouts +
        ", exceptions " + b.health.exceptions + ", retries " + b.health.retries +
        ", CRC errors " + b.health.crc_errors + ", denied by policy " + b.health.denied +
        (b.health.last_error ? " — last: " + b.health.last_error : "");
      const table = document.createElement("table");
      table.dataset.bridge = b.name;
      row(table, ["point", "value", "unit", "read at", "trend"], "th");
      for (const p of b.points) {
        const tr = p.last
          ? row(table, [p.name, shownValue(p), p.last.unit, new Date(p.last.ts_ms).toLocaleTimeString(), sparkline(p.recent)])
          : row(table, [p.name, "—", "", "never", ""]);
        tr.dataset.point = p.name;
      }
      root.append(h, counters);
      // Per-unit counters (units behind a gateway or on an RS-485 line), when counted.
      if (b.health.units && b.health.units.length) {
        const units = document.createElement("table");
        units.dataset.units = b.name;
        row(units, ["unit", "reads", "writes", "errors", "timeouts", "retries", "CRC errors",
          "exceptions", "denied", "last error"], "th");
        for (const u of b.health.units) {
          const tr = row(units, [String(u.unit), String(u.reads_ok), String(u.writes_ok),
            String(u.errors), String(u.timeouts), String(u.retries), String(u.crc_errors),
            String(u.exceptions), String(u.denied), u.last_error || ""]);
          tr.dataset.unit = String(u.unit);
        }
        root.append(units);
      }
      root.append(table);
      const d = row(denials, [b.name, String(b.health.denied), b.health.last_error || ""]);
      d.dataset.bridge = b.name;
    }

    showReports(s.failure_reports);
    showUpdates(s.updates);
    text("error", "");
  } catch (e) {
    text("error", "status unavailable: " + e);
  }
}

async function decide(action) {
  try {
    const response = await fetch("/api/updates/" + action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrfToken || "" },
    });
    if (!response.ok) throw new Error(action + " refused: HTTP " + response.status);
    showUpdates(await response.json());
  } catch (e) {
    text("error", String(e.message || e));
  }
}

// The file goes as the request body (streamed by the browser, never read whole here),
// with the session's CSRF token in the header like every other POST.
async function uploadImage(event) {
  event.preventDefault();
  const file = document.getElementById("update-file").files[0];
  if (!file) return;
  text("update-upload-result", "Uploading " + file.name + " (" + file.size + " bytes)…");
  try {
    const response = await fetch("/api/updates/upload", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrfToken || "", "Content-Type": "application/octet-stream" },
      body: file,
    });
    const answer = await response.json().catch(() => null);
    const detail = answer && answer.detail ? answer.detail : "HTTP " + response.status;
    if (answer && answer.state === "installed") text("update-upload-result", "Installed: " + detail);
    else if (answer && answer.state === "waiting") text("update-upload-result", "Verified, waiting: " + detail);
    else text("update-upload-result", "Refused: " + detail);
  } catch (e) {
    text("update-upload-result", "Upload failed: " + String(e.message || e));
  }
}

async function start() {
  const response = await fetch("/api/session", { credentials: "same-origin" });
  if (response.status === 401) { window.location.assign("/login"); return; }
  csrfToken = (await response.json()).csrf_token;
  document.getElementById("logout-csrf").value = csrfToken;
  document.getElementById("update-defer").addEventListener("click", () => decide("defer"));
  document.getElementById("update-allow").addEventListener("click", () => decide("allow"));
  document.getElementById("update-upload").addEventListener("submit", uploadImage);
  document.getElementById("report-detail-close").addEventListener("click", () => {
    const pane = document.getElementById("report-detail");
    pane.hidden = true;
    delete pane.dataset.report;
  });
  refresh();
  setInterval(refresh, 1000);
}

start();
