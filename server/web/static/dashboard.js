// The fedge dashboard: polls the management API every 2 s and redraws the charts.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "fedge.token";
const COLORS = {
  accuracy: "#2563eb", trainAccuracy: "#93c5fd", loss: "#dc2626", trainLoss: "#fca5a5",
  reported: "#16a34a", dropped: "#f59e0b", refused: "#dc2626",
  uplink: "#7c3aed", downlink: "#0891b2", online: "#16a34a", offline: "#cbd5e1",
  idle: "#64748b", selected: "#2563eb",
};

const $ = (id) => document.getElementById(id);
let jobId = null;

function token() {
  const params = new URLSearchParams(window.location.search);
  const fromUrl = params.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", window.location.pathname + (rest ? `?${rest}` : ""));
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

class AuthError extends Error {}

async function api(path, method) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const res = await fetch(path, { method: method || "GET", headers });
  if (res.status === 401) throw new AuthError("sign in with an API token");
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `${res.status} ${res.statusText}`);
  return body;
}

function showLogin(message) {
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

function pct(v) {
  return v == null ? "-" : `${(100 * v).toFixed(1)} %`;
}

function drawTiles(fleet, rounds) {
  $("t-online").textContent = `${fleet.devices_online} / ${fleet.devices_total}`;
  const job = fleet.job;
  $("t-rounds").textContent = job ? `${job.rounds_committed} / ${job.rounds_total}` : "-";
  const cur = job && job.current_round;
  $("t-current").textContent = cur ? `#${cur.number} ${cur.state} (${cur.reported}/${cur.selected})` : "-";
  const done = rounds.filter((r) => r.state === "committed");
  const last = done[done.length - 1];
  $("t-accuracy").textContent = last ? pct(last.eval_accuracy ?? last.train_accuracy) : "-";
}

function drawHeader(fleet) {
  const job = fleet.job;
  $("job-name").textContent = job ? job.id : "no job";
  const status = job ? job.status : "-";
  const badge = $("job-status");
  badge.textContent = status;
  badge.className = `badge ${status}`;
  $("btn-pause").disabled = !job || status !== "running";
  $("btn-resume").disabled = !job || status !== "paused";
  $("btn-stop").disabled = !job || !["running", "paused"].includes(status);
}

function drawRounds(rounds) {
  const train = rounds.filter((r) => r.kind === "train" && r.state === "committed");
  const xs = train.map((r) => r.round);
  const col = (key) => train.map((r) => r[key]);
  Charts.line($("chart-quality"), xs, [
    { name: "eval accuracy", color: COLORS.accuracy, values: col("eval_accuracy"), axis: "left" },
    { name: "train accuracy", color: COLORS.trainAccuracy, values: col("train_accuracy"), axis: "left" },
    { name: "eval loss", color: COLORS.loss, values: col("eval_loss"), axis: "right" },
    { name: "train loss", color: COLORS.trainLoss, values: col("train_loss"), axis: "right" },
  ], { leftMax: 1, leftLabel: "accuracy", rightLabel: "loss" });

  const attempts = rounds.filter((r) => r.kind === "train");
  const labels = attempts.map((r) => (r.attempt > 1 ? `${r.round}.${r.attempt}` : r.round));
  Charts.bars($("chart-participation"), labels, [
    { name: "reported", color: COLORS.reported, values: attempts.map((r) => r.reported) },
    { name: "dropped", color: COLORS.dropped, values: attempts.map((r) => r.dropped) },
  ], { stacked: true, label: "devices" });
  Charts.bars($("chart-bytes"), labels, [
    { name: "uplink", color: COLORS.uplink, values: attempts.map((r) => r.uplink_bytes) },
    { name: "downlink", color: COLORS.downlink, values: attempts.map((r) => r.downlink_bytes) },
  ], { stacked: false, label: "bytes" });
}

function drawDevices(fleet) {
  const profiles = Object.entries(fleet.by_profile).sort((a, b) => a[0].localeCompare(b[0]));
  Charts.hbars($("chart-profiles"), profiles.map(([name, c]) => ({
    label: name,
    text: `${c.online} of ${c.total} online`,
    parts: [
      { name: "online", value: c.online, color: COLORS.online },
      { name: "offline", value: c.total - c.online, color: COLORS.offline },
    ],
  })));
  const statuses = Object.entries(fleet.by_status);
  Charts.hbars($("chart-status"), statuses.map(([name, n]) => ({
    label: name, text: String(n), parts: [{ name, value: n, color: COLORS[name] || COLORS.idle }],
  })));
}

async function refresh() {
  try {
    const fleet = await api("/v1/fleet");
    let rounds = [];
    jobId = fleet.job ? fleet.job.id : null;
    if (!jobId) {
      const jobs = await api("/v1/jobs?limit=1");
      jobId = jobs.items.length ? jobs.items[0].id : null;
    }
    if (jobId) rounds = (await api(`/v1/jobs/${encodeURIComponent(jobId)}/rounds?limit=5000`)).items;
    $("login").hidden = true;
    drawHeader(fleet);
    drawTiles(fleet, rounds);
    drawRounds(rounds);
    drawDevices(fleet);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.ready = "1";
  } catch (err) {
    if (err instanceof AuthError) showLogin(token() ? "that token was refused" : "");
    $("updated").textContent = err.message;
  }
}

async function control(action) {
  if (!jobId) return;
  if (action === "stop" && !window.confirm(`Stop job ${jobId}? It cannot be resumed.`)) return;
  try {
    await api(`/v1/jobs/${encodeURIComponent(jobId)}/${action}`, "POST");
  } catch (err) {
    $("updated").textContent = `${action}: ${err.message}`;
  }
  refresh();
}

function main() {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    refresh();
  });
  for (const action of ["pause", "resume", "stop"]) {
    $(`btn-${action}`).addEventListener("click", () => control(action));
  }
  refresh();
  setInterval(refresh, POLL_MS);
}

main();
