// Session page: polls the status with If-None-Match, backs off while nothing changes, pauses while
// the tab is hidden, says "reconnecting" while the server is away and carries on when it is back.
import { api } from "./api.js";

const root = document.getElementById("session");
const sessionId = root.dataset.sessionId;
const statusUrl = `/api/report-status/${encodeURIComponent(sessionId)}`;
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const FAST = 1000;      // ms between polls while things change
const SLOW = 5000;      // longest wait when nothing changes
const OFFLINE = 10000;  // longest wait while the server is unreachable

const $ = (id) => document.getElementById(id);
let etag = null;
let doc = null;
let delay = FAST;
let failures = 0;
let timer = null;

function show(element, visible) { element.hidden = !visible; }

function stepState(name) {
  if (doc.completed_tasks.includes(name)) return "done";
  if (doc.failed_step === name) return "failed";
  if (doc.current_agent === name && doc.status === "generating") return "running";
  return "waiting";
}

function renderSteps() {
  const list = $("steps");
  const names = doc.pipeline || doc.completed_tasks;
  if (list.children.length !== names.length) {
    list.replaceChildren(...names.map((name) => {
      const item = document.createElement("li");
      item.dataset.step = name;
      const label = document.createElement("span");
      label.className = "name";
      label.textContent = name.replace(/_/g, " ");
      const state = document.createElement("span");
      state.className = "state";
      item.append(label, state);
      return item;
    }));
  }
  for (const item of list.children) {
    const state = stepState(item.dataset.step);
    item.dataset.state = state;
    item.querySelector(".state").textContent = state;
    if (state === "running") item.setAttribute("aria-current", "step"); else item.removeAttribute("aria-current");
  }
}

function render(next) {
  const before = doc;
  doc = next;
  $("status").textContent = doc.status;
  $("status").dataset.status = doc.status;
  $("current-agent").textContent = doc.current_agent || "–";
  show($("current-agent-line"), Boolean(doc.current_agent));
  $("message").textContent = doc.message || (doc.cancel_requested ? "Cancelling after the current step…" : "");
  $("progress").value = doc.progress;
  $("progress").textContent = `${Math.round(doc.progress * 100)}%`;
  renderSteps();
  $("error").textContent = doc.error || "";
  show($("failure"), doc.status === "failed");
  show($("cancel"), (doc.status === "queued" || doc.status === "generating") && !doc.cancel_requested);
  show($("retry"), doc.status === "failed" || doc.status === "cancelled");
  const completed = doc.status === "completed";
  show($("report"), completed);
  if (completed && (!before || before.status !== "completed")) showReport();
  tick();
}

async function showReport() {
  // The report's files depend on the pipeline: show what this one made (a custom one may make no HTML).
  let downloads = {};
  try {
    const response = await api(`/api/reports/${encodeURIComponent(sessionId)}`, { headers: { Accept: "application/json" } });
    downloads = response.ok ? (await response.json()).downloads || {} : {};
  } catch (error) {
    downloads = {};
  }
  for (const kind of ["md", "html", "pdf"]) show($(`download-${kind}`), Boolean(downloads[kind]));
  show($("downloads"), Object.keys(downloads).length > 0);
  show($("report-frame"), Boolean(downloads.html));
  show($("no-report-file"), !downloads.html);
  if (downloads.html) $("report-frame").src = `/sessions/${encodeURIComponent(sessionId)}/report`;
}

function tick() {
  if (!doc) return;
  const start = Date.parse(doc.started_at);
  const end = doc.finished_at ? Date.parse(doc.finished_at) : Date.now();
  const seconds = Math.max(0, Math.round((end - start) / 1000));
  $("elapsed").textContent = seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
}

function setOnline(online) {
  show($("connection"), !online);
}

function schedule(ms) {
  clearTimeout(timer);
  timer = null;
  if (document.hidden) return;  // visibilitychange resumes
  if (doc && TERMINAL.has(doc.status) && failures === 0) return;  // nothing more will change
  timer = setTimeout(poll, ms);
}

async function poll() {
  try {
    const response = await api(statusUrl, {
      headers: etag ? { "If-None-Match": etag, Accept: "application/json" } : { Accept: "application/json" },
      cache: "no-store",
    });
    if (response.status === 304) {
      delay = Math.min(delay * 1.5, SLOW);
    } else if (response.ok) {
      etag = response.headers.get("ETag");
      render(await response.json());
      delay = FAST;
    } else if (response.status === 404) {
      setOnline(true);
      $("status").textContent = "deleted";
      $("message").textContent = "This session no longer exists.";
      show($("cancel"), false);
      show($("retry"), false);
      return;
    } else {
      throw new Error(`status ${response.status}`);
    }
    failures = 0;
    setOnline(true);
  } catch (error) {
    failures += 1;
    setOnline(false);
    delay = Math.min(FAST * 2 ** failures, OFFLINE);
  }
  schedule(delay);
}

async function act(action) {
  const button = $(action);
  button.disabled = true;
  try {
    const response = await api(`/api/sessions/${encodeURIComponent(sessionId)}/${action}`, { method: "POST" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) $("message").textContent = body.detail || `Could not ${action} (${response.status}).`;
  } catch (error) {
    setOnline(false);
  } finally {
    button.disabled = false;
  }
  delay = FAST;
  failures = 0;
  clearTimeout(timer);
  poll();
}

$("cancel").addEventListener("click", () => act("cancel"));
$("retry").addEventListener("click", () => act("retry"));
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) { delay = FAST; schedule(0); }
});
setInterval(tick, 1000);
poll();
