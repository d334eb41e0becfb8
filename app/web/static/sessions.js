// Sessions list: a page of sessions from the API, a status filter, paging by cursor, delete.
const params = new URLSearchParams(window.location.search);
const table = document.getElementById("sessions");
const filter = document.getElementById("status-filter");
const limit = Number(params.get("limit")) || Number(table.dataset.pageSize) || 50;

filter.value = params.get("status") || "";
filter.addEventListener("change", () => {
  const next = new URLSearchParams();
  if (filter.value) next.set("status", filter.value);
  if (params.get("limit")) next.set("limit", params.get("limit"));
  window.location.assign(`/sessions${next.toString() ? `?${next}` : ""}`);
});

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

function row(session) {
  const tr = document.createElement("tr");
  tr.dataset.sessionId = session.session_id;
  const topic = document.createElement("td");
  const link = document.createElement("a");
  link.className = "session-link";
  link.href = `/sessions/${encodeURIComponent(session.session_id)}`;
  link.textContent = session.topic;
  topic.append(link);
  const status = cell(session.status, "status");
  status.dataset.status = session.status;
  const started = cell(new Date(session.started_at).toLocaleString());
  const actions = document.createElement("td");
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "delete";
  remove.textContent = "Delete";
  remove.setAttribute("aria-label", `Delete ${session.topic}`);
  remove.addEventListener("click", () => removeSession(session, tr, remove));
  actions.append(remove);
  tr.append(topic, status, started, actions);
  return tr;
}

async function removeSession(session, tr, button) {
  if (!window.confirm(`Delete the session "${session.topic}" and its report?`)) return;
  button.disabled = true;
  const response = await fetch(`/api/sessions/${encodeURIComponent(session.session_id)}`, { method: "DELETE" })
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
  try {
    const response = await fetch(`/api/sessions?${query}`, { headers: { Accept: "application/json" } });
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
    first.href = filter.value ? `/sessions?status=${encodeURIComponent(filter.value)}` : "/sessions";
  } catch (error) {
    showError(`The sessions could not be loaded (${error.message}).`);
  }
}

load();
