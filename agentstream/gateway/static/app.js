// The agentstream console: runs, a run's live timeline, and the approvals inbox.
// Plain browser JavaScript against the /v1 API; the token is kept in sessionStorage.
"use strict";

const TOKEN_KEY = "agentstream.token";
const TERMINAL = new Set(["RunCompleted", "RunFailed", "RunAborted", "RunCancelled"]);
let me = null;
let pageAbort = null; // aborts the current page's streams and timers when the page changes

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` }, options.headers);
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    signal: options.signal,
  });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (response.status === 401) signOut("your token was refused; sign in again");
  if (!response.ok) throw new Error(body?.error?.message || `HTTP ${response.status}`);
  return body;
}

function money(usd) { return `$${Number(usd || 0).toFixed(6)}`; }
function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }
function statusBadge(status) { return el("span", { class: `status status-${status}` }, status); }

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  showSignIn(message);
}

function showSignIn(message) {
  document.getElementById("sign-in").hidden = false;
  document.getElementById("page").replaceChildren();
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("sign-in-error").textContent = message || "";
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    me = await api("/v1/me");
  } catch (error) {
    signOut(error.message);
    return;
  }
  document.getElementById("sign-in").hidden = true;
  document.getElementById("sign-out").hidden = false;
  document.getElementById("who").textContent = `${me.name} · ${me.tenant} · ${me.role}`;
  route();
}

function route() {
  if (!me) return;
  if (pageAbort) pageAbort.abort();
  pageAbort = new AbortController();
  const page = document.getElementById("page");
  page.replaceChildren();
  const hash = location.hash || "#/runs";
  const run = hash.match(/^#\/runs\/([^/]+)$/);
  if (run) return runPage(page, decodeURIComponent(run[1]), pageAbort.signal);
  if (hash === "#/approvals") return approvalsPage(page, pageAbort.signal);
  return runsPage(page, pageAbort.signal);
}

function every(ms, signal, fn) {
  fn();
  const timer = setInterval(fn, ms);
  signal.addEventListener("abort", () => clearInterval(timer));
}

// ---------------------------------------------------------------- runs list

function runsPage(page, signal) {
  const error = el("p", { class: "error", id: "runs-error" });
  const rows = el("tbody", { id: "runs-rows" });
  page.append(el("h1", {}, "Runs"));
  if (me.role === "submitter") page.append(submitForm(error));
  page.append(
    error,
    el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, ["Status", "Goal", "Steps", "Tokens", "Cost", "Created"].map((h) => el("th", {}, h)))),
      rows),
  );
  every(2000, signal, async () => {
    try {
      const { runs } = await api("/v1/runs?limit=100", { signal });
      rows.replaceChildren(...runs.map((run) => el("tr", { "data-run-id": run.run_id },
        el("td", {}, statusBadge(run.status)),
        el("td", {}, el("a", { href: `#/runs/${encodeURIComponent(run.run_id)}` }, run.goal)),
        el("td", {}, run.steps),
        el("td", {}, run.input_tokens + run.output_tokens),
        el("td", {}, money(run.cost_usd)),
        el("td", {}, when(run.created_at)))));
      if (!runs.length) rows.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No runs yet.")));
    } catch (e) { if (!signal.aborted) error.textContent = e.message; }
  });
}

function submitForm(error) {
  const goal = el("input", { name: "goal", placeholder: "What should the agent do?", required: "" });
  const model = el("input", { name: "model", placeholder: "model (optional)" });
  return el("form", {
    class: "inline", id: "submit-form",
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        const body = { goal: goal.value };
        if (model.value) body.model = model.value;
        const accepted = await api("/v1/runs", { method: "POST", body, headers: { "Idempotency-Key": crypto.randomUUID() } });
        goal.value = "";
        error.textContent = `submitted run ${accepted.run_id}`;
      } catch (e) { error.textContent = e.message; }
    },
  }, goal, model, el("button", { type: "submit" }, "Submit"));
}

// ---------------------------------------------------------------- one run

function describe(ev) {
  switch (ev.type) {
    case "TaskSubmitted": return [`goal: ${ev.goal}`, ev.model ? `model ${ev.model}` : null];
    case "PlanProposed": return [`step ${ev.step} · ${ev.model}`, ev.thought];
    case "ToolCallRequested": return [`${ev.tool}`, el("pre", { class: "arguments" }, ev.arguments_json)];
    case "ToolCallRejected": return [`${ev.tool} rejected (${ev.reason})`, (ev.errors || []).join("; ")];
    case "ToolCallDispatched": return [`${ev.tool} dispatched`];
    case "ObservationRecorded":
      return [`${ev.tool} ${ev.ok ? "returned" : "failed"}`, el("pre", { class: "observation" }, ev.ok ? ev.data_json : ev.error)];
    case "ApprovalRequested":
      return [`${ev.tool} needs approval (${ev.risk_tier}): ${ev.reason}`, el("pre", {}, ev.arguments_json)];
    case "ApprovalDecided": return [`${ev.decision} by ${ev.reviewer}`, ev.comment];
    case "BudgetCharged": return [`${ev.source}: ${ev.usage.input_tokens}+${ev.usage.output_tokens} tokens · ${money(ev.usage.cost_usd)}`];
    case "HumanAnswered": return [`answered by ${ev.answered_by}`, ev.answer];
    case "GoalChanged": return [`new goal by ${ev.requested_by}: ${ev.goal}`];
    case "RunCompleted": return [ev.answer];
    case "RunFailed": return [ev.error];
    case "RunAborted": return [`${ev.limit}: ${ev.reason}`];
    case "RunCancelled": return [`by ${ev.requested_by}${ev.reason ? `: ${ev.reason}` : ""}`];
    default: return [];
  }
}

// Server-sent events over fetch, so the token travels in a header, not in the URL.
async function followEvents(runId, signal, onEvent) {
  let after = null;
  while (!signal.aborted) {
    try {
      const query = after === null ? "" : `?after=${after}`;
      const response = await fetch(`/v1/runs/${encodeURIComponent(runId)}/events/stream${query}`, {
        headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` }, signal,
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const chunk = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (!data) continue;
          const ev = JSON.parse(data);
          after = ev.offset;
          onEvent(ev);
          if (TERMINAL.has(ev.type)) return;
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function runPage(page, runId, signal) {
  const header = el("div", { class: "card", id: "run-summary" }, "Loading…");
  const actions = el("div", { id: "run-actions" });
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  const error = el("p", { class: "error" });
  page.append(el("p", {}, el("a", { href: "#/runs" }, "← all runs")), header, actions, error, timeline);
  const refresh = async () => {
    try {
      const run = await api(`/v1/runs/${encodeURIComponent(runId)}`, { signal });
      header.replaceChildren(...[
        el("h1", {}, run.goal),
        el("p", {}, statusBadge(run.status), ` · ${run.steps} steps · ${run.input_tokens + run.output_tokens} tokens · `,
          el("span", { id: "run-cost" }, money(run.cost_usd))),
        run.queue_position ? el("p", { id: "run-queue" }, `Queued: position ${run.queue_position} of the tenant's waiting runs`) : null,
        run.answer ? el("p", { id: "run-answer" }, "Answer: ", run.answer) : null,
        run.error ? el("p", { class: "error" }, run.error) : null,
        el("p", { class: "muted" }, `run ${run.run_id} · created ${when(run.created_at)}`),
      ].filter((node) => node !== null));
      actions.replaceChildren(...(me.role === "submitter" && ["queued", "running", "suspended"].includes(run.status)
        ? [el("button", { type: "button", id: "cancel-run", onclick: () => act(`/v1/runs/${encodeURIComponent(runId)}/cancel`, {}) }, "Cancel run")]
        : []));
    } catch (e) { if (!signal.aborted) error.textContent = e.message; }
  };
  const act = async (path, body) => {
    try { await api(path, { method: "POST", body }); } catch (e) { error.textContent = e.message; }
  };
  refresh();
  followEvents(runId, signal, (ev) => {
    const item = el("li", { class: `ev-${ev.type}`, "data-type": ev.type },
      el("span", { class: "kind" }, ev.type), el("span", { class: "muted" }, when(ev.meta.occurred_at)),
      ...describe(ev).filter((x) => x !== null && x !== undefined && x !== "").map((x) => x instanceof Node ? x : el("div", {}, x)));
    if (ev.type === "ApprovalRequested" && me.role === "reviewer") item.append(decisionButtons(ev.approval_id, ev.arguments_digest, error));
    if (ev.type === "ApprovalDecided") {
      // A decided request takes no more decisions: its buttons go.
      for (const buttons of timeline.querySelectorAll(".decision")) {
        if (buttons.dataset.approvalId === ev.approval_id) buttons.remove();
      }
    }
    timeline.append(item);
    if (["BudgetCharged", "ApprovalDecided", "PlanProposed"].includes(ev.type) || TERMINAL.has(ev.type)) refresh();
  });
}

function decisionButtons(approvalId, digest, error, after) {
  const decide = async (decision) => {
    try {
      await api(`/v1/approvals/${encodeURIComponent(approvalId)}/decision`, {
        method: "POST", body: { decision, arguments_digest: digest },
      });
      if (after) after();
    } catch (e) { error.textContent = e.message; }
  };
  return el("span", { class: "decision", "data-approval-id": approvalId },
    el("button", { type: "button", class: "approve", "data-approval-id": approvalId, onclick: () => decide("approved") }, "Approve"),
    " ",
    el("button", { type: "button", class: "deny", "data-approval-id": approvalId, onclick: () => decide("denied") }, "Deny"));
}

// ---------------------------------------------------------------- approvals inbox

function approvalsPage(page, signal) {
  const list = el("div", { id: "approvals" });
  const error = el("p", { class: "error" });
  page.append(el("h1", {}, "Approvals waiting"), error, list);
  const load = async () => {
    try {
      const { approvals } = await api("/v1/approvals?status=pending", { signal });
      list.replaceChildren(...approvals.map((a) => el("div", { class: "card approval", "data-approval-id": a.approval_id },
        el("strong", {}, a.tool), ` · risk ${a.risk_tier} · `, el("a", { href: `#/runs/${encodeURIComponent(a.run_id)}` }, "run"),
        el("div", {}, a.reason),
        el("pre", {}, a.arguments_json),
        el("div", { class: "muted" }, `requested ${when(a.requested_at)}${a.expires_at ? ` · expires ${when(a.expires_at)}` : ""}`),
        me.role === "reviewer" ? decisionButtons(a.approval_id, a.arguments_digest, error, load) : null)));
      if (!approvals.length) list.replaceChildren(el("p", { class: "muted", id: "inbox-empty" }, "Nothing waiting."));
    } catch (e) { if (!signal.aborted) error.textContent = e.message; }
  };
  every(2000, signal, load);
}

// ---------------------------------------------------------------- start

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn(document.getElementById("token").value.trim());
});
document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
if (sessionStorage.getItem(TOKEN_KEY)) signIn(sessionStorage.getItem(TOKEN_KEY));
else showSignIn();
