// Sessions list: a page of sessions from the API, status (and, for admins, owner) filters, paging by cursor,
// delete. On a narrow screen each row is a card (app.css), so cells carry their column's name.
import { api } from "./api.js";

const params = new URLSearchParams(window.location.search);
const table = document.getElementById("sessions");
const filter = document.getElementById("status-filter");
const ownerFilter = document.getElementById("owner-filter");  // admins only
const showOwners = Boolean(table.dataset.owners);
const limit = Number(params.get("limit")) || Number(table.dataset.pageSize) || 50;

filter.value = params.get("status") || "";
if (ownerFilter) ownerFilter.value = params.has("owner") ? params.get("owner") : "*";

function filtered() {
  const next = new URLSearchParams();
  if (filter.value) next.set("status", filter.value);
  if (ownerFilter && ownerFilter.value !== "*") next.set("owner", ownerFilter.value);
  return next;
}

for (const select of [filter, ownerFilter]) {
  select?.addEventListener("change", () => {
    const next = filtered();
    if (params.get("limit")) next.set("limit", params.get("limit"));
    window.location.assign(`/sessions${next.toString() ? `?${next}` : ""}`);
  });
}

function cell(text, className, label) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (label) td.dataset.label = label;
  td.textContent = text;
  return td;
}

function row(session) {
  const tr = document.createElement("tr");
  tr.dataset.sessionId = session.session_id;
  const topic = document.createElement("td");
  topic.className = "topic";
  const link = document.createElement("a");
  link.className = "session-link";
  link.href = `/sessions/${encodeURIComponent(session.session_id)}`;
  link.textContent = session.topic;
  topic.append(link);
  const status = cell(session.status, "status", "Status");
  status.dataset.status = session.status;
  const started = cell(new Date(session.started_at).toLocaleString(), "started", "Started");
  const actions = document.createElement("td");
  actions.className = "actions";
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "delete";
  remove.textContent = "Delete";
  remove.setAttribute("aria-label", `Delete ${session.topic}`);
  remove.addEventListener("click", () => removeSession(session, tr, remove));
  actions.append(remove);
  tr.append(topic);
  if (showOwners) tr.append(cell(session.owner ?? "no one", "owner", "Owner"));
  tr.append(status, started, actions);
  return tr;
}

async function removeSession(session, tr, button) {
  if (!window.confirm(`Delete the session "${session.topic}" and its report?`)) return;
  button.disabled = true;
  const response = await api(`/api/sessions/${encodeURIComponent(session.session_id)}`, { method: "DELETE" })
    .catch(() => null);
  if (response && (response.status === 204 || response.status === 404)) {
    tr.remove();
  } else {
    button.disabled = false;
    showError("The session could not be deleted. Try again.");
  }
}

function showError(text) {
  const element = document.getElementById("list-error");
  element.textContent = text;
  element.hidden = !text;
}

async function load() {
  const query = new URLSearchParams({ limit: String(limit) });
  for (const key of ["status", "cursor"]) if (params.get(key)) query.set(key, params.get(key));
  if (params.has("owner")) query.set("owner", params.get("owner"));
  try {
    const response = await api(`/api/sessions?${query}`, { headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail || response.status);
    table.tBodies[0].replaceChildren(...body.sessions.map(row));
    document.getElementById("total").textContent =
      `${body.total_sessions} session${body.total_sessions === 1 ? "" : "s"}`;
    document.getElementById("empty").hidden = body.total_sessions !== 0;
    const next = document.getElementById("next-page");
    if (body.next_cursor) {
      const nextParams = new URLSearchParams(query);
      nextParams.set("cursor", body.next_cursor);
      if (!params.get("limit")) nextParams.delete("limit");
      next.href = `/sessions?${nextParams}`;
    }
    next.hidden = !body.next_cursor;
    const first = document.getElementById("first-page");
    first.hidden = !params.get("cursor");
    const firstParams = filtered();
    first.href = `/sessions${firstParams.toString() ? `?${firstParams}` : ""}`;
  } catch (error) {
    showError(`The sessions could not be loaded (${error.message}).`);
  }
}

load();
