// The pages' requests to the API. The sign-in cookie goes along (same origin); requests that change
// something carry the page's CSRF token; a 401 (the sign-in ended) sends the browser to sign in again.
const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content;

export async function api(url, options = {}) {
  const method = (options.method || "GET").toUpperCase();
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (csrfToken && method !== "GET" && method !== "HEAD") headers["X-CSRFToken"] = csrfToken;
  const response = await fetch(url, { ...options, headers, credentials: "same-origin" });
  if (response.status === 401) {
    const here = window.location.pathname + window.location.search;
    window.location.assign(`/sign-in?next=${encodeURIComponent(here)}`);
  }
  return response;
}
