// phonegate example frontend: plain JS, no build step, no dependencies.
//
// Talks to phonegate in managed mode with a phonegate client token (never a Vapi key):
//   GET   /phone-number?limit=100   the list
//   GET   /phone-number/{id}        one number, with the answer's Cache-Status
//   PATCH /phone-number/{id}        {"name": ...}; needs a token with the write scope
//
// Configuration: the form, or the address: ?api=http://127.0.0.1:8080#token=... (the fragment
// never reaches a server; ?token= works too). The token is taken out of the address bar once read.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  // Every exchange with phonegate, newest last: method, path, status, a few headers and the body
  // as received (never the token). Handy in the DevTools console; the browser test reads it.
  const exchanges = [];
  window.phonegateExchanges = exchanges;

  const state = { api: "", token: "", current: null };

  class PhonegateError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // ---- configuration ----

  function readAddress() {
    const query = new URLSearchParams(location.search);
    const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
    const api = query.get("api") || fragment.get("api") || "";
    const token = fragment.get("token") || query.get("token") || "";
    if (query.has("token") || fragment.has("token")) {
      // Keep the token out of the address bar (and so out of bookmarks and screenshots).
      query.delete("token");
      const search = query.toString();
      history.replaceState(null, "", location.pathname + (search ? `?${search}` : ""));
    }
    return { api, token };
  }

  function baseUrl(raw) {
    const url = new URL(raw.trim());
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new PhonegateError(0, "the phonegate URL must start with http:// or https://");
    }
    return url.origin + url.pathname.replace(/\/+$/, "");
  }

  // ---- talking to phonegate ----

  // phonegate's own refusals and the upstream's errors share one shape,
  // {"statusCode": 403, "error": "Forbidden", "message": "..."}; message may also be a list.
  // Other shapes ({"error": {"message": ...}}, text) are read as well as can be.
  function errorMessage(response, json, text) {
    let message = "";
    if (json && typeof json === "object") {
      const m = json.message ?? json.error?.message ?? json.error;
      if (Array.isArray(m)) message = m.filter((x) => typeof x === "string").join("; ");
      else if (typeof m === "string") message = m;
    }
    if (!message) message = text && text.length <= 200 ? text.trim() : "";
    const head = `${response.status} ${response.statusText || (json && json.error) || "Error"}`.trim();
    let out = message ? `${head}: ${message}` : head;
    const retry = response.headers.get("retry-after");
    if (retry) out += ` (retry after ${retry} s)`;
    return out;
  }

  async function call(method, path, body) {
    if (!state.api || !state.token) {
      throw new PhonegateError(0, "enter the phonegate URL and a client token first");
    }
    const headers = { Authorization: `Bearer ${state.token}` };
    const init = {
      method,
      headers,
      mode: "cors",
      credentials: "omit", // phonegate authenticates by token; no cookies are involved
      cache: "no-store", // show phonegate's own cache at work, not the browser's
      referrerPolicy: "no-referrer",
    };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const entry = { method, path, status: 0, cacheStatus: null, body: null, error: null };
    exchanges.push(entry);
    let response;
    try {
      response = await fetch(state.api + path, init);
    } catch (e) {
      // The browser hides why (CORS refusal, connection refused, bad certificate) from scripts.
      entry.error = String(e);
      throw new PhonegateError(
        0,
        `Could not reach phonegate at ${state.api}. Is it running, and is this page's origin ` +
          `(${location.origin}) in its cors.allowed_origins?`,
      );
    }
    const text = await response.text();
    entry.status = response.status;
    entry.cacheStatus = response.headers.get("cache-status");
    entry.body = text;
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!response.ok) throw new PhonegateError(response.status, errorMessage(response, json, text));
    if (json === null) throw new PhonegateError(response.status, "phonegate answered without JSON");
    return { json, headers: response.headers };
  }

  // ---- rendering (textContent only: nothing received is ever parsed as HTML) ----

  function show(el, text) {
    el.textContent = text || "";
    el.hidden = !text;
  }

  function notice(text) {
    show($("notice"), text);
  }

  function error(text) {
    show($("error"), text);
  }

  function cell(row, text, className) {
    const td = row.insertCell();
    td.textContent = text ?? "";
    if (className) td.className = className;
    return td;
  }

  function signals(headers) {
    const none = "—";
    return {
      cacheStatus: headers.get("cache-status") || "(not sent)",
      xCache: headers.get("x-cache") || none,
      age: headers.get("age") || none,
      ratelimit:
        [headers.get("ratelimit"), headers.get("ratelimit-policy")].filter(Boolean).join(" / ") ||
        none,
    };
  }

  function renderList(numbers, headers) {
    const tbody = $("numbers").tBodies[0];
    tbody.replaceChildren();
    for (const n of numbers) {
      const row = tbody.insertRow();
      row.dataset.id = n.id;
      cell(row, n.name, "name");
      cell(row, n.number || n.sipUri || "", "number");
      cell(row, n.provider, "provider");
      cell(row, n.status, "status");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "view";
      button.dataset.id = n.id;
      button.textContent = "Details";
      row.insertCell().append(button);
    }
    show($("empty"), numbers.length ? "" : "No phone numbers.");
    $("list-meta").textContent = `${numbers.length} · Cache-Status: ${signals(headers).cacheStatus}`;
  }

  function clearList() {
    $("numbers").tBodies[0].replaceChildren();
    $("list-meta").textContent = "";
    show($("empty"), "Nothing to show.");
  }

  function renderDetails(n, headers) {
    state.current = n.id;
    $("details").hidden = false;
    $("details").dataset.id = n.id;
    $("detail-title").textContent = n.name || "(no name)";
    $("detail-id").textContent = n.id;
    $("detail-number").textContent = n.number || n.sipUri || "";
    $("detail-provider").textContent = n.provider || "";
    $("detail-status").textContent = n.status || "";
    $("detail-updated").textContent = n.updatedAt || "";
    const s = signals(headers);
    $("cache-status").textContent = s.cacheStatus;
    $("x-cache").textContent = s.xCache;
    $("age").textContent = s.age;
    $("ratelimit").textContent = s.ratelimit;
    $("edit-name").value = n.name || "";
    $("raw").textContent = JSON.stringify(n, null, 2);
  }

  function hideDetails() {
    state.current = null;
    $("details").hidden = true;
    delete $("details").dataset.id;
    $("raw").textContent = "";
  }

  // ---- actions ----

  async function loadList() {
    const { json, headers } = await call("GET", "/phone-number?limit=100");
    if (!Array.isArray(json)) throw new PhonegateError(200, "unexpected list answer");
    renderList(json, headers);
  }

  async function viewNumber(id) {
    const { json, headers } = await call("GET", `/phone-number/${encodeURIComponent(id)}`);
    renderDetails(json, headers);
  }

  async function saveName(id, name) {
    // Only the changed field: sending a redacted object back would be refused (400), since
    // "[REDACTED]" would overwrite the real secret.
    const { json, headers } = await call("PATCH", `/phone-number/${encodeURIComponent(id)}`, {
      name,
    });
    renderDetails(json, headers);
    notice(`Saved: the number is now called “${json.name}”.`);
    await loadList();
  }

  // Runs one user action: clears old messages, shows the error if any, and counts finished
  // actions in <body data-actions> so a test can wait for one to finish.
  async function act(action) {
    error("");
    notice("");
    try {
      await action();
    } catch (e) {
      error(e instanceof PhonegateError ? e.message : `Unexpected error: ${e}`);
    } finally {
      document.body.dataset.actions = String(Number(document.body.dataset.actions || 0) + 1);
    }
  }

  function connect() {
    return act(async () => {
      hideDetails();
      clearList();
      state.api = baseUrl($("api-url").value);
      state.token = $("token").value.trim();
      await loadList();
    });
  }

  // ---- wiring ----

  $("config").addEventListener("submit", (event) => {
    event.preventDefault();
    connect();
  });

  $("numbers").addEventListener("click", (event) => {
    const button = event.target.closest("button.view");
    if (button) act(() => viewNumber(button.dataset.id));
  });

  $("reload").addEventListener("click", () => {
    if (state.current) act(() => viewNumber(state.current));
  });

  $("edit").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("edit-name").value.trim();
    if (state.current && name) act(() => saveName(state.current, name));
  });

  const initial = readAddress();
  $("api-url").value = initial.api || "http://127.0.0.1:8080";
  $("token").value = initial.token;
  if (initial.api && initial.token) connect();
})();
