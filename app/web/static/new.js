// New report page: posts the form as JSON to the API and shows the server's field messages.
import { api } from "./api.js";

const form = document.getElementById("new-report");
const FIELDS = ["topic", "user_request", "page_count", "source_count", "complexity", "urls"];

function showError(field, messages) {
  const element = document.getElementById(`${field}-error`);
  const input = document.getElementById(field);
  const text = Array.isArray(messages) ? messages.join(" ")
    : (messages && typeof messages === "object") ? Object.values(messages).flat().join(" ") : String(messages || "");
  element.textContent = text;
  element.hidden = !text;
  if (input) input.setAttribute("aria-invalid", text ? "true" : "false");
}

function clearErrors() {
  FIELDS.forEach((field) => showError(field, ""));
  showError("form", "");
}

function number(value) {
  // Send what was typed: the server says what is wrong with it ("" is missing, "abc" is not a number).
  const trimmed = value.trim();
  return trimmed === "" ? undefined : Number.isInteger(Number(trimmed)) ? Number(trimmed) : trimmed;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  const value = (id) => document.getElementById(id).value;
  const urls = value("urls").split(/\s+/).filter(Boolean);
  const requirements = {
    topic: value("topic").trim(),
    page_count: number(value("page_count")),
    source_count: number(value("source_count")),
    complexity: value("complexity"),
  };
  if (urls.length) requirements.urls = urls;
  const button = document.getElementById("submit");
  button.disabled = true;
  try {
    const response = await api("/api/submit-requirements", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ user_request: value("user_request").trim(), requirements }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.status === 202) {
      window.location.assign(`/sessions/${encodeURIComponent(body.session_id)}`);
      return;
    }
    const errors = body.errors || {};
    const nested = errors.requirements && !Array.isArray(errors.requirements) ? errors.requirements : {};
    for (const field of FIELDS) {
      if (nested[field]) showError(field, nested[field]);
    }
    if (errors.user_request) showError("user_request", errors.user_request);
    const placed = Object.keys(nested).some((f) => FIELDS.includes(f)) || errors.user_request;
    if (!placed) showError("form", body.detail || `The server answered ${response.status}.`);
    const first = form.querySelector("[aria-invalid=true]");
    if (first) first.focus();
  } catch (error) {
    showError("form", "The server cannot be reached. Check your connection and try again.");
  } finally {
    button.disabled = false;
  }
});
