// servicebay chat page: protocol v1 over WebSocket (docs/chat-protocol.md), no build step.
//
// Guarantees as the person sees them: each room message is shown once, in seq order. The page
// remembers the last seq it showed; on every (re)connect it says so in `hello` and the server
// replays after it. A seq already shown is ignored; a hole closes the socket so the next
// connection resumes from the last shown seq. Unsent messages keep their idempotency key and are
// resent after every welcome, so a resend can never be stored twice.
"use strict";

const $ = (id) => document.getElementById(id);
const RETRYABLE = new Set(["unavailable", "not_ready"]);

const chat = {
  user: null,
  token: null,
  room: null,
  ws: null,
  last: null, // last seq shown in this room
  acked: 0,
  delivered: 0, // every member has acknowledged up to here (receipt)
  pending: new Map(), // key -> {body, li, seq}
  retry: 250,
  timer: null,
  roomWaits: false, // an error told us the server is retrying the room (store unavailable)
};
window.chat = chat; // for people poking around in the console (and the browser test)

function storeKey(name) {
  return `servicebay-chat:${location.host}:${name}`;
}

function newKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function showError(text) {
  $("error").textContent = text || "";
}

function setStatus(text) {
  $("status").textContent = text;
  $("status").className = text === "online" ? "online" : "offline";
}

async function login(event) {
  event.preventDefault();
  const name = $("name").value.trim();
  chat.room = $("room").value.trim();
  let token = localStorage.getItem(storeKey(`token:${name}`));
  if (!token) {
    const response = await fetch("/api/v1/signup", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name }),
    });
    const body = await response.json();
    if (response.status !== 201) {
      showError(body.message);
      return;
    }
    token = body.token;
    localStorage.setItem(storeKey(`token:${name}`), token);
  }
  chat.user = name;
  chat.token = token;
  $("login").querySelectorAll("input, button").forEach((el) => (el.disabled = true));
  connect();
}

function connect() {
  clearTimeout(chat.timer);
  if (chat.ws && chat.ws.readyState <= WebSocket.OPEN) return;
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(`${scheme}${location.host}/ws`);
  chat.ws = ws;
  setStatus("connecting");
  ws.onopen = () => {
    // First connection of this page: ask from 0 to show the retained history.
    const rooms = { [chat.room]: chat.last === null ? 0 : chat.last };
    ws.send(JSON.stringify({ type: "hello", v: 1, token: chat.token, rooms }));
  };
  ws.onmessage = (event) => {
    const data = JSON.parse(event.data);
    for (const frame of Array.isArray(data) ? data : [data]) handle(ws, frame);
    flushAck(ws);
  };
  ws.onclose = () => dropped(ws);
}

// The socket is gone (closed, or the browser went offline, where a close handshake may never
// finish): forget it at once and schedule a reconnect with backoff.
function dropped(ws) {
  if (!ws || chat.ws !== ws) return;
  chat.ws = null;
  ws.close();
  setStatus("offline"); // typing stays possible: new messages wait as "sending"
  chat.timer = setTimeout(connect, chat.retry * (0.5 + Math.random()));
  chat.retry = Math.min(chat.retry * 2, 4000);
}

function send(frame) {
  const ws = chat.ws;
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
}

function handle(ws, frame) {
  if (frame.room !== undefined && frame.room !== chat.room) return;
  switch (frame.type) {
    case "welcome":
      chat.user = frame.user; // the id the server made at sign-up (the name and a suffix)
      chat.retry = 250;
      setStatus("online");
      $("text").disabled = $("send").disabled = false;
      for (const [key, item] of chat.pending) {
        send({ type: "send", room: chat.room, key, body: item.body });
      }
      break;
    case "joined":
      // Delivery starts after `from` (the server clamps our position to what it still has).
      chat.last = frame.from;
      roomResumed();
      break;
    case "msg":
      roomResumed();
      onMessage(ws, frame);
      break;
    case "sent": {
      const item = chat.pending.get(frame.key);
      if (item) {
        item.seq = frame.seq;
        label(item.li, frame.seq <= chat.delivered ? "delivered" : "sent");
      }
      break;
    }
    case "receipt":
      chat.delivered = frame.delivered;
      document.querySelectorAll("#messages li.mine").forEach((li) => {
        if (li.dataset.seq && Number(li.dataset.seq) <= chat.delivered) label(li, "delivered");
      });
      break;
    case "presence":
      $("online").replaceChildren(
        ...frame.online.map((user) => Object.assign(document.createElement("li"), { textContent: user })),
      );
      break;
    case "typing":
      $("typing").textContent = `${frame.user} is typing…`;
      setTimeout(() => ($("typing").textContent = ""), 2000);
      break;
    case "error":
      onError(frame);
      break;
  }
}

function onMessage(ws, frame) {
  if (chat.last !== null && frame.seq <= chat.last) return; // shown already
  if (chat.last !== null && frame.seq !== chat.last + 1) {
    ws.close(); // a hole: resume from the last shown seq on a fresh connection
    return;
  }
  chat.last = frame.seq;
  const mine = frame.from === chat.user ? chat.pending.get(frame.key) : undefined;
  const li = mine ? mine.li : render(frame.from, frame.body, frame.from === chat.user);
  if (mine) chat.pending.delete(frame.key);
  li.dataset.seq = frame.seq;
  li.dataset.key = frame.key;
  li.classList.remove("sending");
  $("messages").appendChild(li); // stream order is seq order
  if (li.classList.contains("mine")) label(li, frame.seq <= chat.delivered ? "delivered" : "sent");
  li.scrollIntoView({ block: "end" });
}

function render(from, body, mine) {
  const li = document.createElement("li");
  const who = Object.assign(document.createElement("span"), { className: "from", textContent: from });
  const text = Object.assign(document.createElement("span"), { className: "body", textContent: body });
  li.append(who, text);
  if (mine) {
    li.classList.add("mine");
    li.append(Object.assign(document.createElement("span"), { className: "state" }));
  }
  return li;
}

function label(li, state) {
  const el = li.querySelector(".state");
  if (el) el.textContent = state;
  li.dataset.state = state;
}

function onError(frame) {
  const item = frame.ref ? chat.pending.get(frame.ref) : undefined;
  if (item && !RETRYABLE.has(frame.code)) {
    chat.pending.delete(frame.ref);
    label(item.li, `not sent: ${frame.message}`);
  }
  showError(`${frame.code}: ${frame.message}`);
  // With `room`: the server retries the room by itself; the notice goes once delivery resumes.
  if (frame.room !== undefined) chat.roomWaits = true;
}

function roomResumed() {
  if (!chat.roomWaits) return;
  chat.roomWaits = false;
  showError("");
}

function flushAck(ws) {
  if (chat.last !== null && chat.last > chat.acked && ws.readyState === WebSocket.OPEN) {
    chat.acked = chat.last;
    ws.send(JSON.stringify({ type: "ack", room: chat.room, seq: chat.last }));
  }
}

function compose(event) {
  event.preventDefault();
  const body = $("text").value;
  if (!body) return;
  $("text").value = "";
  const key = newKey();
  const li = render(chat.user, body, true);
  li.classList.add("sending");
  label(li, "sending");
  $("messages").appendChild(li);
  chat.pending.set(key, { body, li, seq: null });
  send({ type: "send", room: chat.room, key, body });
}

$("login").addEventListener("submit", login);
$("compose").addEventListener("submit", compose);
$("text").addEventListener("input", () => send({ type: "typing", room: chat.room }));
window.addEventListener("offline", () => dropped(chat.ws));
window.addEventListener("online", () => chat.user && connect());
