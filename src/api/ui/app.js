// The causeway flow page: finds a flow by correlation id or event id, draws its events as a
// causal tree with one badge per hop, and lists, replays and purges dead letters. Plain DOM,
// no libraries. Everything the API says goes into the page as text, never as markup.
"use strict";

const TOKEN_KEY = "causeway.api-token";
const REFRESH_MS = 2000;
const DEAD_LETTERS_SHOWN = 100;
// Deeper causes are drawn at this depth, still naming their parent, so the page stays wide
// enough to read.
const MAX_NESTING = 8;
const STATE_SIGNS = {
  pending: "○",
  retrying: "↻",
  delivered: "✓",
  dead_lettered: "✗",
  duplicate_skipped: "=",
  in_progress: "○",
  settled: "✓",
  stuck: "✗",
};

// The API's root: the page is served at <root>/ui/.
const API_ROOT = new URL("../", document.baseURI);

// What the current view is; a newer view makes an older one's answers stale.
let generation = 0;
let refreshTimer = null;

// ---------------------------------------------------------------------------------------------
// DOM helpers

/** An element; string children become text nodes, attributes are set as given. */
function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") element.className = value;
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

function view() {
  return document.getElementById("view");
}

/** Replaces the view with `children`, named `name` (its `data-view`). */
function show(name, ...children) {
  const main = view();
  main.dataset.view = name;
  main.replaceChildren(...children.flat().filter(Boolean));
}

function say(text, isError) {
  const message = document.getElementById("message");
  message.textContent = text || "";
  message.classList.toggle("error", Boolean(isError));
}

/** `2026-12-07T12:00:00.123456Z` as `2026-12-07 12:00:00.123Z`; anything else as it is. */
function time(iso) {
  if (typeof iso !== "string") return "";
  const match = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d{1,3})?\d*(Z|[+-]\d{2}:?\d{2})?$/.exec(iso);
  if (!match) return iso;
  return `${match[1]} ${match[2]}${match[3] || ""}${match[4] || ""}`;
}

function timeElement(iso) {
  return h("time", { datetime: iso, title: iso }, time(iso));
}

/** The end of an id, enough to tell the events of one flow apart (v7 ids share a start). */
function shortId(id) {
  const text = String(id);
  return text.length > 12 ? `…${text.slice(-8)}` : text;
}

function stateLabel(state) {
  return String(state).replace(/_/g, " ");
}

/** A state as a sign and its words, coloured by a class; readable without the colour. */
function stateBadge(state) {
  const known = Object.hasOwn(STATE_SIGNS, state);
  return h(
    "span",
    { class: `badge state-${known ? state : "unknown"}` },
    h("span", { "aria-hidden": "true" }, known ? STATE_SIGNS[state] : "?"),
    " ",
    stateLabel(state),
  );
}

function flowLink(correlationId) {
  return h("a", { href: `#/flow/${encodeURIComponent(correlationId)}` }, correlationId);
}

/** A table with a header row of `titles`, then `rows`. */
function table(attributes, titles, rows) {
  return h(
    "table",
    attributes,
    h("thead", {}, h("tr", {}, titles.map((title) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, rows),
  );
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

// ---------------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** The request needs a token; the form is showing. */
class TokenNeeded extends Error {}

/** Calls the API with the token of this tab, if any; the JSON answer, or throws. */
async function api(method, path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token !== null) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  let response;
  try {
    response = await fetch(new URL(path, API_ROOT), init);
  } catch (error) {
    throw new ApiError(0, `the sidecar did not answer (${error.message})`);
  }
  if (response.status === 401) {
    askForToken(token);
    throw new TokenNeeded("the API needs its token");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const detail = data && (data.detail || data.title);
    throw new ApiError(response.status, detail || `the API answered ${response.status}`);
  }
  return data;
}

function problemText(error) {
  return error instanceof ApiError ? error.message : `unexpected: ${error.message}`;
}

/**
 * `GET path` for the view `current`: the answer, or null when the view has changed or the call
 * failed (then `failed` gets the reason, unless the token form took over).
 */
async function load(path, current, failed) {
  try {
    const answer = await api("GET", path);
    return isCurrent(current) ? answer : null;
  } catch (error) {
    if (isCurrent(current) && !(error instanceof TokenNeeded)) failed(problemText(error));
    return null;
  }
}

function errorText(text) {
  return h("p", { class: "error" }, text);
}

// ---------------------------------------------------------------------------------------------
// The token

/** Shows the token form after a 401 to a call that sent `sent` (a token, or null). */
function askForToken(sent) {
  // A token typed in since the call was sent is being tried already.
  if (sessionStorage.getItem(TOKEN_KEY) !== sent) return;
  const refused = sent !== null;
  stopRefresh();
  if (refused) sessionStorage.removeItem(TOKEN_KEY);
  const section = document.getElementById("token");
  const wasHidden = section.hidden;
  section.hidden = false;
  document.getElementById("token-error").textContent = refused
    ? "The sidecar refused that token."
    : "";
  document.getElementById("forget-token").hidden = true;
  if (wasHidden || refused) document.getElementById("token-input").focus();
}

function useToken(event) {
  event.preventDefault();
  const input = document.getElementById("token-input");
  const token = input.value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  input.value = "";
  document.getElementById("token").hidden = true;
  document.getElementById("token-error").textContent = "";
  document.getElementById("forget-token").hidden = false;
  route();
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("forget-token").hidden = true;
  route();
}

// ---------------------------------------------------------------------------------------------
// Views and their addresses: #/ (recent flows, dead letters), #/flow/{correlation id}

function route() {
  stopRefresh();
  const current = ++generation;
  say("");
  const hash = location.hash.replace(/^#\/?/, "");
  if (hash.startsWith("flow/")) {
    let correlationId;
    try {
      correlationId = decodeURIComponent(hash.slice("flow/".length));
    } catch {
      show("error", h("p", { class: "error" }, "That address does not name a flow."));
      return;
    }
    openFlow(correlationId, current);
  } else {
    openHome(current);
  }
}

function isCurrent(viewGeneration) {
  return viewGeneration === generation;
}

function stopRefresh() {
  if (refreshTimer !== null) clearTimeout(refreshTimer);
  refreshTimer = null;
}

/** Shows the flow of a correlation id, or of an event id. */
async function search(event) {
  event.preventDefault();
  const id = document.getElementById("search-id").value.trim();
  if (!id) return;
  const current = generation;
  say(`Looking for ${id}…`);
  let flow;
  try {
    flow = await findFlow(id);
  } catch (error) {
    if (!(error instanceof TokenNeeded)) say(problemText(error), true);
    return;
  }
  if (!isCurrent(current)) return;
  if (flow === null) {
    say(`No flow has the correlation id or event id “${id}”.`, true);
    return;
  }
  const target = `#/flow/${encodeURIComponent(flow.correlation_id)}`;
  if (location.hash === target) route();
  else location.hash = target;
}

async function findFlow(id) {
  try {
    return await api("GET", `v1/flows/${encodeURIComponent(id)}`);
  } catch (error) {
    // Not a correlation id (unknown, or not of that form): maybe an event id.
    if (!(error instanceof ApiError) || (error.status !== 404 && error.status !== 400)) throw error;
  }
  try {
    return await api("GET", `v1/flows?event_id=${encodeURIComponent(id)}`);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 400)) return null;
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// Home: recent flows and dead letters

function openHome(current) {
  const flows = h("div", { "data-recent-flows": "" }, h("p", {}, "Loading…"));
  const deadLetters = h("div", { "data-dead-letters": "" }, h("p", {}, "Loading…"));
  show(
    "home",
    h(
      "section",
      { "aria-labelledby": "recent-title" },
      h(
        "div",
        { class: "section-head" },
        h("h2", { id: "recent-title" }, "Recent flows"),
        h("button", { type: "button", "data-action": "refresh", onclick: () => route() }, "Refresh"),
      ),
      flows,
    ),
    h(
      "section",
      { "aria-labelledby": "dead-letters-title" },
      h("h2", { id: "dead-letters-title" }, "Dead letters of this sidecar's subscriptions"),
      deadLetters,
    ),
  );
  loadRecentFlows(flows, current);
  loadDeadLetters(deadLetters, current);
}

async function loadRecentFlows(into, current) {
  const listed = await load("v1/flows", current, (why) => into.replaceChildren(errorText(`Cannot list flows: ${why}`)));
  if (listed === null) return;
  const flows = Array.isArray(listed.flows) ? listed.flows : [];
  if (flows.length === 0) {
    into.replaceChildren(h("p", {}, "No flows yet."));
    return;
  }
  const rows = flows.map((flow) =>
    h(
      "tr",
      { "data-listed-flow": flow.correlation_id, "data-state": flow.state },
      h("td", {}, flowLink(flow.correlation_id)),
      h("td", {}, stateBadge(flow.state)),
      h("td", { class: "number" }, String(flow.events ?? "")),
      h("td", {}, timeElement(flow.updated_at)),
    ),
  );
  into.replaceChildren(
    ...(listed.scope === "local" ? [localScopeNote()] : []),
    table({ class: "flows", "aria-label": "Recent flows, newest first" }, ["Correlation id", "State", "Events", "Updated"], rows),
  );
}

async function loadDeadLetters(into, current) {
  const listed = await load("v1/subscriptions", current, (why) =>
    into.replaceChildren(errorText(`Cannot list subscriptions: ${why}`)),
  );
  if (listed === null) return;
  const subscriptions = Array.isArray(listed.subscriptions) ? listed.subscriptions : [];
  if (subscriptions.length === 0) {
    into.replaceChildren(h("p", {}, "This sidecar has no subscriptions."));
    return;
  }
  const sections = subscriptions.map((subscription) => {
    const section = h(
      "section",
      { class: "subscription", "data-subscription": subscription.name },
      h("h3", {}, subscription.name),
      h("p", {}, "Loading…"),
    );
    loadSubscriptionDeadLetters(section, subscription, current);
    return section;
  });
  into.replaceChildren(...sections);
}

async function loadSubscriptionDeadLetters(section, subscription, current, note) {
  const name = subscription.name;
  const path = `v1/subscriptions/${encodeURIComponent(name)}/dead-letters?limit=${DEAD_LETTERS_SHOWN}`;
  const listed = await load(path, current, (why) =>
    section.replaceChildren(h("h3", {}, name), errorText(`Cannot list the dead letters: ${why}`)),
  );
  if (listed === null) return;
  const deadLetters = Array.isArray(listed.dead_letters) ? listed.dead_letters : [];
  const total = Number(listed.total) || 0;
  const result = h("p", { role: "status", "data-action-result": "" }, note || "");
  const act = (action) => () => deadLetterAction(action, section, subscription, current);
  section.replaceChildren(
    h(
      "div",
      { class: "section-head" },
      h("h3", {}, name),
      h(
        "span",
        { class: "count", "data-dead-letter-total": String(total) },
        plural(total, "dead letter"),
      ),
      h("button", { type: "button", "data-action": "replay", disabled: total === 0, onclick: act("replay") }, "Replay"),
      h("button", { type: "button", "data-action": "purge", class: "danger", disabled: total === 0, onclick: act("purge") }, "Purge"),
    ),
    h(
      "p",
      { class: "quiet" },
      `Event ${subscription.event_type ?? "?"} to ${subscription.route ?? "?"}; dead-letter queue `,
      h("code", {}, listed.queue ?? subscription.dead_letter_queue ?? ""),
      total > deadLetters.length ? ` (the oldest ${deadLetters.length} shown)` : "",
    ),
    result,
    deadLetters.length === 0 ? null : deadLetterTable(deadLetters),
  );
}

function deadLetterTable(deadLetters) {
  const rows = deadLetters.map((letter) => {
    const error = String(letter.last_error ?? "");
    const status = letter.last_status && !error.includes(String(letter.last_status)) ? ` (status ${letter.last_status})` : "";
    return h(
      "tr",
      { "data-dead-letter": letter.event_id ?? "" },
      h("td", {}, letter.event_id ? h("code", {}, letter.event_id) : "(no id)"),
      h("td", {}, letter.event_type ?? ""),
      h("td", {}, letter.correlation_id ? flowLink(letter.correlation_id) : ""),
      h("td", { "data-dead-letter-reason": letter.reason ?? "" }, letter.reason ?? ""),
      h("td", {}, error, status, letter.body !== undefined ? h("div", { class: "quiet" }, `body: ${letter.body}`) : null),
      h("td", { class: "number" }, String(letter.attempts ?? "")),
      h("td", {}, letter.dead_lettered_at ? timeElement(letter.dead_lettered_at) : ""),
    );
  });
  const titles = ["Event", "Type", "Correlation id", "Reason", "Last error", "Attempts", "Dead-lettered at"];
  return table({ class: "dead-letters" }, titles, rows);
}

async function deadLetterAction(action, section, subscription, current) {
  const name = subscription.name;
  const question =
    action === "replay"
      ? `Replay every dead letter of ${name}? They go back to its queue and the app gets them again.`
      : `Purge every dead letter of ${name}? They are deleted for good.`;
  if (!window.confirm(question)) return;
  const path = `v1/subscriptions/${encodeURIComponent(name)}/dead-letters`;
  let answer;
  try {
    answer = action === "replay" ? await api("POST", `${path}/replay`) : await api("DELETE", path);
  } catch (error) {
    if (!(error instanceof TokenNeeded) && isCurrent(current)) {
      const result = section.querySelector("[data-action-result]");
      if (result) {
        result.textContent = `${action === "replay" ? "Replay" : "Purge"} failed: ${problemText(error)}`;
        result.classList.add("error");
      }
    }
    return;
  }
  if (!isCurrent(current)) return;
  const note =
    action === "replay"
      ? `Replayed ${plural(answer.replayed, "dead letter")}.`
      : `Purged ${plural(answer.purged, "dead letter")}.`;
  loadSubscriptionDeadLetters(section, subscription, current, note);
}

// ---------------------------------------------------------------------------------------------
// A flow

function openFlow(correlationId, current) {
  // What outlives one drawing of the flow.
  const state = { correlationId, current, lastAnswer: null, replayNote: "" };
  show("flow", h("p", {}, `Loading the flow ${correlationId}…`));
  refreshFlow(state);
}

async function refreshFlow(state) {
  stopRefresh();
  let flow;
  try {
    flow = await api("GET", `v1/flows/${encodeURIComponent(state.correlationId)}`);
  } catch (error) {
    if (!isCurrent(state.current) || error instanceof TokenNeeded) return;
    if (error instanceof ApiError && (error.status === 404 || error.status === 400)) {
      show(
        "flow",
        backLink(),
        h("p", { class: "error", "data-flow-missing": "" }, `No flow ${state.correlationId}: ${problemText(error)}`),
      );
      return;
    }
    // The sidecar may be restarting: say so, and try again.
    say(`Cannot read the flow: ${problemText(error)}`, true);
    refreshTimer = setTimeout(() => refreshFlow(state), REFRESH_MS);
    return;
  }
  if (!isCurrent(state.current)) return;
  say("");
  // Drawn again only when something changed, so that a pointer resting on a badge keeps its
  // tooltip between reads.
  const answer = JSON.stringify(flow);
  if (answer !== state.lastAnswer) {
    state.lastAnswer = answer;
    drawFlow(flow, state);
  }
  const readAt = document.querySelector("[data-refresh]");
  if (flow.state === "settled") {
    if (readAt) readAt.textContent = `Settled; read at ${new Date().toLocaleTimeString()}, no longer refreshed.`;
  } else {
    if (readAt) readAt.textContent = `Read at ${new Date().toLocaleTimeString()}; read again every 2 s until the flow settles.`;
    refreshTimer = setTimeout(() => refreshFlow(state), REFRESH_MS);
  }
}

function backLink() {
  return h("nav", { class: "back" }, h("a", { href: "#/" }, "← Recent flows and dead letters"));
}

function localScopeNote() {
  return h(
    "p",
    { class: "note", "data-scope-note": "local" },
    "Only this sidecar's hops are shown: it keeps its receipts in its own store (no shared ",
    h("code", {}, "CAUSEWAY_DEDUP_URL"),
    "), so what other services did with these events is on their sidecars' pages.",
  );
}

function drawFlow(flow, state) {
  const events = Array.isArray(flow.events) ? flow.events : [];
  show(
    "flow",
    backLink(),
    h(
      "section",
      {
        class: "flow",
        "data-flow-state": flow.state,
        "data-correlation-id": flow.correlation_id,
        "data-scope": flow.scope,
        "aria-labelledby": "flow-title",
      },
      h("h2", { id: "flow-title" }, "Flow ", h("code", {}, flow.correlation_id)),
      h(
        "p",
        { class: "flow-state" },
        stateBadge(flow.state),
        flow.reason ? h("span", { "data-flow-reason": "" }, ` ${flow.reason}`) : null,
      ),
      flow.scope === "local" ? localScopeNote() : null,
      flow.definition ? definitionLine(flow.definition) : null,
      h(
        "p",
        { class: "quiet" },
        "Started ",
        timeElement(flow.started_at),
        ", updated ",
        timeElement(flow.updated_at),
        flow.service ? `; as seen by the sidecar of ${flow.service}` : "",
        flow.scope === "shared" ? " (receipts shared by every sidecar on this Redis)." : ".",
      ),
      flow.truncated
        ? h("p", { class: "note" }, "The flow has more receipts than are kept for one flow: some are missing.")
        : null,
      replayActions(flow, events, state),
      h("p", { class: "quiet", "data-refresh": "" }),
      h("h3", {}, plural(events.length, "event")),
      eventTree(events),
    ),
  );
}

/** Where the flow's definition says the business stands. */
function definitionLine(definition) {
  const outcome = definition.outcome;
  return h(
    "p",
    { "data-definition-outcome": outcome ?? "" },
    "Definition ",
    h("strong", {}, definition.name ?? ""),
    outcome ? [": outcome ", h("span", { class: `badge outcome-${outcome}` }, stateLabel(outcome))] : ": no outcome yet",
    definition.reason ? ` (${definition.reason})` : "",
    definition.deadline ? [", deadline ", timeElement(definition.deadline)] : "",
    ".",
  );
}

/** **Replay this flow**, enabled when this sidecar holds a dead letter of it. */
function replayActions(flow, events, state) {
  const ours = (hop) => !flow.service || hop.service === flow.service;
  const dead = events.flatMap((event) => (event.hops || []).filter((hop) => hop.state === "dead_lettered"));
  const elsewhere = [...new Set(dead.filter((hop) => !ours(hop)).map((hop) => hop.service))];
  return h(
    "div",
    { class: "actions" },
    h(
      "button",
      {
        type: "button",
        "data-action": "replay-flow",
        disabled: !dead.some(ours),
        onclick: () => replayFlow(flow.correlation_id, state),
      },
      "Replay this flow",
    ),
    " ",
    h("span", { role: "status", "data-replay-result": "" }, state.replayNote),
    elsewhere.length > 0
      ? h("p", { class: "quiet" }, `Dead letters at ${elsewhere.join(", ")} are replayed from their own sidecars.`)
      : null,
  );
}

async function replayFlow(correlationId, state) {
  if (!window.confirm(`Replay the dead letters of ${correlationId} in this sidecar's subscriptions?`)) return;
  let answer;
  try {
    answer = await api("POST", `v1/flows/${encodeURIComponent(correlationId)}/replay`);
  } catch (error) {
    if (error instanceof TokenNeeded || !isCurrent(state.current)) return;
    state.replayNote = `Replay failed: ${problemText(error)}`;
    state.lastAnswer = null;
    refreshFlow(state);
    return;
  }
  if (!isCurrent(state.current)) return;
  const per = Object.entries(answer.subscriptions || {}).map(([name, count]) => `${name}: ${count}`);
  state.replayNote = `Replayed ${plural(answer.replayed, "dead letter")}${per.length ? ` (${per.join(", ")})` : ""}.`;
  state.lastAnswer = null;
  // Follow the flow again, also when it had settled before.
  refreshFlow(state);
}

/** The events as nested lists: each one under its causation parent, when that is in the flow. */
function eventTree(events) {
  const nodes = new Map();
  for (const event of events) {
    if (!nodes.has(event.event_id)) nodes.set(event.event_id, { event, children: [] });
  }
  const roots = [];
  for (const node of nodes.values()) {
    const parent = node.event.causation_id ? nodes.get(node.event.causation_id) : undefined;
    if (parent && parent !== node) parent.children.push(node);
    else roots.push(node);
  }
  const drawn = new Set();
  const list = h("ol", { class: "tree", "aria-label": "Events, each under the event that caused it" });
  const draw = (node, into, depth) => {
    if (drawn.has(node.event.event_id)) return;
    drawn.add(node.event.event_id);
    const children = h("ol", { class: "children" });
    const item = h("li", {}, eventNode(node.event, nodes));
    into.append(item);
    const target = depth < MAX_NESTING ? children : into;
    for (const child of node.children) draw(child, target, depth + 1);
    if (children.childElementCount > 0) item.append(children);
  };
  for (const root of roots) draw(root, list, 0);
  // A causation cycle leaves its events without a root: draw them at the top.
  for (const node of nodes.values()) draw(node, list, 0);
  return list;
}

function eventNode(event, nodes) {
  const hops = Array.isArray(event.hops) ? event.hops : [];
  let cause = null;
  if (event.causation_id) {
    const parent = nodes.get(event.causation_id);
    cause = h(
      "p",
      { class: "cause" },
      h("span", { "aria-hidden": "true" }, "↳ "),
      "caused by ",
      parent
        ? h(
            "button",
            { type: "button", class: "link", title: event.causation_id, onclick: () => focusEvent(event.causation_id) },
            `${parent.event.event_type} ${shortId(event.causation_id)}`,
          )
        : h("span", { title: event.causation_id }, `${shortId(event.causation_id)} (not in this flow)`),
    );
  }
  return h(
    "article",
    {
      class: "event",
      id: `event-${event.event_id}`,
      "data-event-id": event.event_id,
      "data-event-type": event.event_type,
      "data-caused-by": event.causation_id ?? "",
      tabindex: "-1",
    },
    h(
      "h4",
      {},
      h("span", { class: "event-type" }, event.event_type ?? "(no type)"),
      event.schema_version ? h("span", { class: "quiet" }, ` v${event.schema_version}`) : null,
    ),
    h(
      "p",
      { class: "meta" },
      "from ",
      h("strong", { "data-source": "" }, event.source ?? "?"),
      " · ",
      h("code", { title: event.event_id }, shortId(event.event_id)),
      " · ",
      timeElement(event.occurred_at),
    ),
    cause,
    event.unrouted
      ? h("p", { class: "note", "data-unrouted": "" }, "Unrouted: no subscription took this event.")
      : hops.length === 0
        ? h("p", { class: "quiet" }, "No hops.")
        : h("ul", { class: "hops", "aria-label": "Hops" }, hops.map(hopBadge)),
  );
}

/** Moves to an event of the flow on the page. */
function focusEvent(eventId) {
  const target = document.getElementById(`event-${eventId}`);
  if (target) {
    target.scrollIntoView({ block: "center" });
    target.focus();
  }
}

function hopBadge(hop) {
  const name = `${hop.service}/${hop.subscription}`;
  const details = hopDetails(hop);
  let visible = null;
  if (hop.state === "dead_lettered") {
    visible = h(
      "span",
      { class: "hop-detail", "data-dead-letter-reason": hop.reason ?? "" },
      `${hop.reason ?? "dead-lettered"}${hop.last_error ? `: ${hop.last_error}` : ""}`,
    );
  } else if (hop.state === "retrying") {
    visible = h(
      "span",
      { class: "hop-detail" },
      `attempt ${hop.attempts ?? "?"}${hop.max_attempts ? ` of ${hop.max_attempts}` : ""}${hop.last_error ? `: ${hop.last_error}` : ""}`,
    );
  }
  return h(
    "li",
    {
      class: `hop state-${Object.hasOwn(STATE_SIGNS, hop.state) ? hop.state : "unknown"}`,
      "data-hop": name,
      "data-state": hop.state,
      title: details,
      tabindex: "0",
      "aria-label": `${name}: ${stateLabel(hop.state)}. ${details.replace(/\n/g, "; ")}`,
    },
    h("span", { class: "hop-name" }, name),
    " ",
    h("span", { class: "hop-state" }, h("span", { "aria-hidden": "true" }, STATE_SIGNS[hop.state] ?? "?"), " ", stateLabel(hop.state)),
    visible ? [" ", visible] : null,
  );
}

/** What the tooltip of a hop says: the last error, the attempts and the times it has. */
function hopDetails(hop) {
  const lines = [`${hop.service}/${hop.subscription}: ${stateLabel(hop.state)}`];
  const add = (label, value) => {
    if (value !== undefined && value !== null && value !== "") lines.push(`${label}: ${value}`);
  };
  add("reason", hop.reason);
  add("last error", hop.last_error);
  add("last status", hop.last_status);
  if (hop.attempts !== undefined) add("attempts", hop.max_attempts ? `${hop.attempts} of ${hop.max_attempts}` : hop.attempts);
  add("took", hop.took_ms !== undefined ? `${hop.took_ms} ms` : undefined);
  add("pending since", time(hop.since));
  add("replayed at", time(hop.replayed_at));
  add("next attempt at", time(hop.next_attempt_at));
  add("delivered at", time(hop.delivered_at));
  add("dead-lettered at", time(hop.dead_lettered_at));
  add("dead-letter queue", hop.dead_letter_queue);
  add("skipped at", time(hop.skipped_at));
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------

function start() {
  document.getElementById("search").addEventListener("submit", search);
  document.getElementById("token-form").addEventListener("submit", useToken);
  document.getElementById("forget-token").addEventListener("click", forgetToken);
  document.getElementById("forget-token").hidden = sessionStorage.getItem(TOKEN_KEY) === null;
  window.addEventListener("hashchange", route);
  route();
}

start();
