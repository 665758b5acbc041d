// The servicebay page: four read-only views over /api/v1. Values are inserted as text
// (never as HTML), so nothing a broker or user named can run in the page.
"use strict";

const api = async (path) => {
  const token = sessionStorage.getItem("servicebay-token");
  const response = await fetch("/api/v1" + path, { headers: { Authorization: "Bearer " + token } });
  if (response.status === 401) { showLogin(); throw new Error("a valid token is needed"); }
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
};

const el = (tag, text, cls) => {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
};

const table = (headers, rows) => {
  const t = el("table");
  const head = el("tr");
  headers.forEach((h) => head.appendChild(el("th", h)));
  t.appendChild(head);
  rows.forEach((cells) => {
    const tr = el("tr");
    cells.forEach((c) => tr.appendChild(c instanceof Node ? c : el("td", c)));
    t.appendChild(tr);
  });
  return t;
};

const stateCell = (state) => el("td", state, "state-" + String(state).replace(" ", "_"));
const ns = () => encodeURIComponent(document.getElementById("namespace").value || "default");

const views = {
  async marketplace(root) {
    const { items } = await api("/marketplace?namespace=" + ns());
    items.forEach((svc) => {
      root.appendChild(el("h2", svc.name + " (broker " + svc.broker + ")"));
      root.appendChild(el("p", svc.description));
      root.appendChild(table(["plan", "description", "free", "bindable", "parameters"],
        svc.plans.map((p) => [p.name, p.description, p.free ? "yes" : "no", p.bindable ? "yes" : "no",
          el("td", Object.keys(((p.schemas.instance_create || {}).properties) || {}).join(", "))])));
    });
    if (!items.length) root.appendChild(el("p", "No services yet: register a broker with `bay broker register`."));
  },
  async instances(root) {
    const { items } = await api("/instances?namespace=" + ns());
    root.appendChild(table(["name", "service", "plan", "state", "last operation", "parameters"],
      items.map((i) => [i.name, i.service, i.plan, stateCell(i.state),
        i.last_operation ? i.last_operation.kind + ": " + (i.last_operation.description || "") : "",
        JSON.stringify(i.parameters)])));
  },
  async bindings(root) {
    const { items } = await api("/bindings?namespace=" + ns());
    root.appendChild(table(["name", "kind", "instance", "app", "state"],
      items.map((b) => [b.name, b.kind, b.instance, b.app || "", stateCell(b.state)])));
  },
  async operations(root) {
    const { items } = await api("/operations?namespace=" + ns());
    root.appendChild(table(["when", "kind", "target", "state", "description", "by"],
      items.map((o) => [o.created_at, o.kind, o.binding || o.instance, stateCell(o.state), o.description || "", o.created_by])));
  },
};

const showLogin = () => {
  document.getElementById("login").hidden = false;
  document.getElementById("logout").hidden = true;
};

const render = async () => {
  const name = (location.hash || "#marketplace").slice(1);
  const root = document.getElementById("view");
  const status = document.getElementById("status");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === name));
  if (!sessionStorage.getItem("servicebay-token")) { showLogin(); return; }
  document.getElementById("logout").hidden = false;
  root.replaceChildren(el("h2", name[0].toUpperCase() + name.slice(1)));
  status.textContent = "";
  try { await (views[name] || views.marketplace)(root); } catch (error) { status.textContent = error.message; }
};

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("servicebay-token", document.getElementById("token").value.trim());
  document.getElementById("login").hidden = true;
  render();
});
document.getElementById("logout").addEventListener("click", () => { sessionStorage.removeItem("servicebay-token"); showLogin(); });
document.getElementById("namespace").addEventListener("change", render);
window.addEventListener("hashchange", render);
render();
