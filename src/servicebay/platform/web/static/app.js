// The servicebay page over /api/v1: marketplace (provision), instances (bind, deprovision),
// bindings (unbind), operations. Values are inserted as text, never as HTML, so nothing a broker
// or user named can run in the page. Credentials are never fetched: apps get them with `bay run`.
"use strict";

const TOKEN_KEY = "servicebay-token";
const SETTLED = new Set(["ready", "failed"]);
const POLL_MS = 1000;
let pollTimer = null;

class ApiError extends Error {
  constructor(body, status) {
    super(body.message || "the platform answered " + status);
    this.code = body.error;
    this.problems = body.problems || [];
  }
}

const api = async (method, path, body) => {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const init = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch("/api/v1" + path, init);
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("The platform did not accept that token.");
    throw new ApiError({ message: "a valid API token is needed" }, 401);
  }
  const text = await response.text();
  const parsed = text ? JSON.parse(text) : {};
  if (!response.ok) throw new ApiError(parsed, response.status);
  return parsed;
};

const el = (tag, text, cls) => {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
};

const button = (label, onClick, cls) => {
  const b = el("button", label, cls);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
};

const table = (headers, rows) => {
  const t = el("table");
  const head = el("tr");
  headers.forEach((h) => head.appendChild(el("th", h)));
  t.appendChild(head);
  rows.forEach(({ name, cells }) => {
    const tr = el("tr");
    if (name) tr.dataset.name = name;
    cells.forEach((c) => tr.appendChild(c instanceof Node ? c : el("td", c)));
    t.appendChild(tr);
  });
  return t;
};

const stateCell = (state) => {
  const td = el("td", state, "state state-" + String(state).replace(/ /g, "_"));
  td.dataset.state = state;
  return td;
};

const actions = (...buttons) => {
  const td = el("td", null, "actions");
  buttons.filter(Boolean).forEach((b) => td.appendChild(b));
  return td;
};

const ns = () => document.getElementById("namespace").value.trim() || "default";
const q = () => "namespace=" + encodeURIComponent(ns());
const say = (text, cls) => {
  const status = document.getElementById("status");
  status.textContent = text || "";
  status.className = cls || "";
};

// A readable line for an error: the problems name their field ("size: must be <= 10 (got 50)").
const explain = (error) =>
  error.problems && error.problems.length
    ? error.problems.map((p) => (p.message.startsWith(p.path + ":") || !p.path ? p.message : p.path + ": " + p.message)).join("; ")
    : error.message;

// -- provision form, rendered from the plan's instance_create schema ----------------------------

const describe = (prop) => {
  const bits = [];
  if (prop.type) bits.push(prop.type);
  if (prop.minimum !== undefined || prop.maximum !== undefined) {
    bits.push((prop.minimum ?? "…") + " to " + (prop.maximum ?? "…"));
  }
  if (prop.default !== undefined) bits.push("default " + JSON.stringify(prop.default));
  if (prop.enum) bits.push("one of " + prop.enum.join(", "));
  return bits.join(", ") + (prop.description ? " — " + prop.description : "");
};

const paramInput = (key, prop) => {
  let input;
  if (Array.isArray(prop.enum)) {
    input = el("select");
    input.appendChild(el("option", ""));
    prop.enum.forEach((v) => { const o = el("option", v); o.value = JSON.stringify(v); input.appendChild(o); });
  } else if (prop.type === "boolean") {
    input = el("input");
    input.type = "checkbox";
  } else if (prop.type === "object" || prop.type === "array") {
    input = el("textarea");
    input.placeholder = "JSON";
  } else {
    input = el("input");
    input.type = prop.writeOnly || prop["x-sensitive"] ? "password" : prop.type === "integer" || prop.type === "number" ? "number" : "text";
    if (input.type === "number") input.step = "any";
    input.autocomplete = "off";
  }
  input.name = key;
  input.dataset.type = prop.type || "";
  return input;
};

// The value of one field, or undefined when left empty (the plan's default then applies).
const paramValue = (input) => {
  if (input.type === "checkbox") return input.checked ? true : undefined;
  const raw = input.value.trim();
  if (raw === "") return undefined;
  if (input.tagName === "SELECT" || input.tagName === "TEXTAREA") {
    try { return JSON.parse(raw); } catch { return raw; }
  }
  if (input.dataset.type === "integer" || input.dataset.type === "number") {
    return Number.isNaN(Number(raw)) ? raw : Number(raw);
  }
  return raw;
};

const provisionForm = (service, plan) => {
  const form = el("form", null, "provision");
  form.noValidate = true;
  form.appendChild(el("h3", "Provision " + service.name + " / " + plan.name));
  const nameLabel = el("label", "Instance name ");
  const nameInput = el("input");
  nameInput.name = "instance-name";
  nameInput.required = true;
  nameInput.placeholder = "lowercase-name";
  nameLabel.appendChild(nameInput);
  form.appendChild(nameLabel);
  const schema = (plan.schemas && plan.schemas.instance_create) || {};
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const fields = Object.entries(props).map(([key, prop]) => {
    const row = el("div", null, "param");
    row.dataset.param = key;
    const label = el("label", key + (required.has(key) ? " *" : "") + " ");
    const input = paramInput(key, prop);
    label.appendChild(input);
    row.appendChild(label);
    row.appendChild(el("small", describe(prop)));
    row.appendChild(el("div", null, "problem"));
    form.appendChild(row);
    return input;
  });
  const failure = el("p", null, "form-error");
  failure.setAttribute("role", "alert");
  form.appendChild(failure);
  const submit = el("button", "Provision");
  submit.type = "submit";
  form.appendChild(submit);
  form.appendChild(button("Cancel", () => form.remove()));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    form.querySelectorAll(".problem, .form-error").forEach((p) => { p.textContent = ""; });
    const parameters = {};
    fields.forEach((input) => { const v = paramValue(input); if (v !== undefined) parameters[input.name] = v; });
    const body = { service: service.name, plan: plan.name, name: nameInput.value.trim(), namespace: ns(), parameters };
    submit.disabled = true;
    try {
      await api("POST", "/instances", body);
      say("Provisioning " + body.name + "…", "ok");
      location.hash = "#instances";
    } catch (error) {
      error.problems.forEach((p) => {
        const row = form.querySelector('[data-param="' + CSS.escape(String(p.path).split(".")[0]) + '"] .problem');
        if (row) row.textContent = p.message;
      });
      failure.textContent = "Not provisioned: " + explain(error);
      say(failure.textContent, "error");
    } finally {
      submit.disabled = false;
    }
  });
  return form;
};

// -- bind form ----------------------------------------------------------------------------------

const bindForm = (instance) => {
  const form = el("form", null, "bind");
  form.appendChild(el("h3", "Bind " + instance.name + " to an app"));
  const fields = {};
  [["app", "App name ", true], ["name", "Binding name (optional) ", false]].forEach(([key, text, req]) => {
    const label = el("label", text);
    const input = el("input");
    input.name = key;
    input.required = req;
    input.autocomplete = "off";
    label.appendChild(input);
    form.appendChild(label);
    fields[key] = input;
  });
  const submit = el("button", "Bind");
  submit.type = "submit";
  form.appendChild(submit);
  form.appendChild(button("Cancel", () => form.remove()));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { instance: instance.name, namespace: ns(), app: fields.app.value.trim() };
    if (fields.name.value.trim()) body.name = fields.name.value.trim();
    submit.disabled = true;
    try {
      const { binding } = await api("POST", "/bindings", body);
      say("Binding " + binding.name + "…", "ok");
      location.hash = "#bindings";
    } catch (error) {
      say("Not bound: " + explain(error), "error");
    } finally {
      submit.disabled = false;
    }
  });
  return form;
};

const remove = async (what, path, name, question) => {
  if (!window.confirm(question)) return;
  try {
    await api("DELETE", path + "/" + encodeURIComponent(name) + "?" + q());
    say(what + " " + name + "…", "ok");
  } catch (error) {
    say(explain(error), "error");
  }
  render();
};

// -- views --------------------------------------------------------------------------------------

const lastOp = (o) => (o ? o.kind + " " + o.state + (o.description ? ": " + o.description : "") : "");
const more = (root, page) => { if (page.next) root.appendChild(el("p", "Showing the first " + page.items.length + "; use the CLI for the rest.")); };

const views = {
  async marketplace(root) {
    const { items } = await api("GET", "/marketplace?" + q());
    items.forEach((svc) => {
      const section = el("section", null, "service");
      section.dataset.service = svc.name;
      section.appendChild(el("h2", svc.name + " (broker " + svc.broker + ")"));
      section.appendChild(el("p", svc.description));
      const slot = el("div", null, "form-slot");
      section.appendChild(table(["plan", "description", "free", "bindable", "parameters", ""],
        svc.plans.map((p) => ({ name: p.name, cells: [p.name, p.description, p.free ? "yes" : "no", p.bindable ? "yes" : "no",
          Object.keys(((p.schemas.instance_create || {}).properties) || {}).join(", "),
          actions(button("Provision…", () => slot.replaceChildren(provisionForm(svc, p)), "provision"))] }))));
      section.appendChild(slot);
      root.appendChild(section);
    });
    if (!items.length) root.appendChild(el("p", "No services yet: register a broker with `bay broker register`."));
  },
  async instances(root) {
    const page = await api("GET", "/instances?" + q());
    const slot = el("div", null, "form-slot");
    root.appendChild(table(["name", "service", "plan", "state", "last operation", "parameters", ""],
      page.items.map((i) => ({ name: i.name, cells: [i.name, i.service, i.plan, stateCell(i.state), lastOp(i.last_operation),
        JSON.stringify(i.parameters),
        actions(
          i.state === "ready" && button("Bind…", () => slot.replaceChildren(bindForm(i)), "bind"),
          SETTLED.has(i.state) && button("Deprovision", () => remove("Deprovisioning", "/instances", i.name,
            "Deprovision " + i.name + "? The broker deletes it and its data."), "deprovision"),
        )] }))));
    root.appendChild(slot);
    if (!page.items.length) root.appendChild(el("p", "No instances in this namespace: provision one from the marketplace."));
    more(root, page);
    return page.items.some((i) => !SETTLED.has(i.state));
  },
  async bindings(root) {
    const page = await api("GET", "/bindings?" + q());
    root.appendChild(el("p", "Credentials are never shown here: an app receives them with `bay run --app APP -- COMMAND`.", "hint"));
    root.appendChild(table(["name", "kind", "instance", "app", "state", "last operation", ""],
      page.items.map((b) => ({ name: b.name, cells: [b.name, b.kind, b.instance, b.app || "", stateCell(b.state), lastOp(b.last_operation),
        actions(SETTLED.has(b.state) && button(b.kind === "key" ? "Delete key" : "Unbind", () => remove("Unbinding", "/bindings", b.name,
          "Unbind " + b.name + "? Its credentials stop working."), "unbind"))] }))));
    if (!page.items.length) root.appendChild(el("p", "No bindings in this namespace: bind an instance from the instances view."));
    more(root, page);
    return page.items.some((b) => !SETTLED.has(b.state));
  },
  async operations(root) {
    const page = await api("GET", "/operations?" + q());
    root.appendChild(table(["when", "kind", "target", "state", "description", "by"],
      page.items.map((o) => ({ cells: [o.created_at, o.kind, o.binding || o.instance, stateCell(o.state), o.description || "", o.created_by] }))));
    more(root, page);
    return page.items.some((o) => o.state === "in progress");
  },
};

// -- shell --------------------------------------------------------------------------------------

const showLogin = (message) => {
  document.getElementById("login").hidden = false;
  document.getElementById("logout").hidden = true;
  document.getElementById("whoami").textContent = "";
  document.getElementById("view").replaceChildren();
  say(message || "", message ? "error" : "");
};

const pollAgain = () => {
  pollTimer = setTimeout(() => (document.querySelector("#view form") ? pollAgain() : render()), POLL_MS);
};

const render = async () => {
  clearTimeout(pollTimer);
  const name = views[(location.hash || "#marketplace").slice(1)] ? (location.hash || "#marketplace").slice(1) : "marketplace";
  const root = document.getElementById("view");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === name));
  if (!sessionStorage.getItem(TOKEN_KEY)) { showLogin(); return; }
  document.getElementById("login").hidden = true;
  document.getElementById("logout").hidden = false;
  const fresh = el("div");
  fresh.appendChild(el("h2", name[0].toUpperCase() + name.slice(1)));
  try {
    const busy = await views[name](fresh);
    root.replaceChildren(...fresh.childNodes);
    root.dataset.view = name;
    // Work in progress: look again shortly, unless the user is filling in a form.
    if (busy) pollAgain();
  } catch (error) {
    if (error.code !== undefined || !(error instanceof ApiError)) say(explain(error), "error");
  }
};

const whoami = async () => {
  try {
    const me = await api("GET", "/whoami");
    document.getElementById("whoami").textContent = "signed in as " + me.user + (me.admin ? " (admin)" : "");
  } catch (error) { /* a refused token shows the login form already */ }
};

document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, token.value.trim());
  token.value = "";
  say("");
  await whoami();
  if (sessionStorage.getItem(TOKEN_KEY)) render();
});
document.getElementById("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showLogin(); });
document.getElementById("namespace").addEventListener("change", () => { say(""); render(); });
// An error belongs to the view it happened in; progress notes ("Provisioning x…") carry over.
window.addEventListener("hashchange", () => { if (document.getElementById("status").className === "error") say(""); render(); });
if (sessionStorage.getItem(TOKEN_KEY)) whoami();
render();
