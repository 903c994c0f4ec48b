// The dev demo: the official socket.io client against the service's protocol (docs/protocol.md).
// Reconnects are Socket.IO connection state recovery: when the transport drops (a network
// cut, the "Drop" button, an instance draining), socket.io-client reconnects by itself and,
// with `socket.recovered === true`, the server has put the socket back in its room and handed
// over every message it missed (they arrive as ordinary `message:received` events before
// `connect`). Only when recovery was not possible (away too long) does the page join again.
// `window.demo` exposes the page's state so a test (or you, in the console) can watch it.
(() => {
  "use strict";
  const $ = (selector) => document.querySelector(selector);
  const params = new URLSearchParams(location.search);

  const state = {
    status: "disconnected",
    user: "",
    room: "",
    lastId: null,
    joinedOnce: false,
    away: false,
    missedWhileAway: 0,
    seen: new Set(),
    messages: [],
    present: [],
    typing: [],
    recoveries: [],
    errors: [],
    shutdownNotice: false,
    socket: null,
  };
  window.demo = state;

  // -- rendering ---------------------------------------------------------------------------

  function setStatus(text, kind) {
    state.status = text;
    const el = $("#status");
    el.textContent = text;
    el.className = "status " + (kind || text);
  }

  function system(text) {
    const li = document.createElement("li");
    li.className = "system";
    li.textContent = text;
    append(li);
  }

  function append(li) {
    const list = $("#messages");
    list.appendChild(li);
    list.scrollTop = list.scrollHeight;
  }

  function idKey(id) {
    const [ms, seq] = String(id).split("-").map(Number);
    return [ms || 0, seq || 0];
  }

  function byId(a, b) {
    const [am, as] = idKey(a.id);
    const [bm, bs] = idKey(b.id);
    return am - bm || as - bs;
  }

  function isNewer(id, than) {
    if (than === null) return true;
    return byId({ id }, { id: than }) > 0;
  }

  function show(message, recovered) {
    if (!message || state.seen.has(message.id)) return;
    state.seen.add(message.id);
    if (isNewer(message.id, state.lastId)) state.lastId = message.id;
    state.messages.push({ id: message.id, userId: message.userId, message: message.message, recovered: !!recovered });
    const li = document.createElement("li");
    li.dataset.id = message.id;
    if (message.userId === state.user) li.classList.add("mine");
    if (recovered) li.classList.add("recovered");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = message.userId;
    const text = document.createElement("span");
    text.textContent = message.message;
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = new Date(message.timestamp).toLocaleTimeString();
    li.append(who, text, when);
    append(li);
  }

  function renderPresence() {
    const list = $("#present");
    list.replaceChildren(...state.present.map((user) => {
      const li = document.createElement("li");
      li.textContent = user === state.user ? user + " (you)" : user;
      return li;
    }));
  }

  function renderTyping() {
    const others = state.typing.filter((user) => user !== state.user);
    $("#typing").textContent = others.length
      ? others.join(", ") + (others.length > 1 ? " are typing…" : " is typing…")
      : "";
  }

  function setEnabled(on) {
    $("#text").disabled = !on;
    $("#send").disabled = !on;
    $("#drop").disabled = !on;
  }

  // -- protocol ----------------------------------------------------------------------------

  async function fetchToken(user) {
    const response = await fetch("/dev/token?user=" + encodeURIComponent(user), { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body.token;
  }

  function refreshPresence() {
    const socket = state.socket;
    if (!socket || !socket.connected) return;
    socket.emit("presence:get", state.room, (ack) => {
      if (ack && ack.ok) {
        state.present = ack.users.slice().sort();
        renderPresence();
      }
    });
  }

  function ready() {
    $("#room-name").textContent = state.room;
    setEnabled(true);
    refreshPresence();
  }

  // a first join, or a new one when the server could not recover the session: the ack's
  // history (minus what is on screen already) fills the gap as far as history reaches
  function join() {
    const again = state.joinedOnce;
    state.socket.emit("join:room", { roomId: state.room }, (ack) => {
      if (!ack || !ack.ok) {
        const error = (ack && ack.error) || { code: "internal", message: "no ack" };
        state.errors.push(error);
        system("join refused: " + error.code + ": " + error.message);
        return;
      }
      const fresh = ack.history.filter((m) => !state.seen.has(m.id));
      fresh.forEach((m) => show(m, again));
      if (again) {
        state.recoveries.push({ missed: fresh.length, recovered: false });
        system("reconnected as a new session: " + fresh.length + " message(s) from history");
      } else {
        system("joined " + state.room + " as " + state.user);
      }
      state.joinedOnce = true;
      ready();
    });
  }

  function restore(delay) {
    const manager = state.socket.io;
    manager.reconnectionDelay(delay.min);
    manager.reconnectionDelayMax(delay.max);
    manager.randomizationFactor(delay.jitter);
  }

  const BACKOFF = { min: 500, max: 5000, jitter: 0.5 };

  function connect() {
    if (typeof io === "undefined") {
      $("#missing-client").hidden = false;
      setStatus("no client library", "error");
      return;
    }
    if (state.socket) {
      state.socket.disconnect();
    }
    state.user = $("#user").value.trim();
    state.room = $("#room").value.trim();
    Object.assign(state, { lastId: null, joinedOnce: false, seen: new Set(), messages: [], present: [], typing: [] });
    $("#messages").replaceChildren();
    const transports = params.get("transport") ? [params.get("transport")] : undefined;
    const socket = io({
      transports,
      // called before every (re)connect: a fresh token each time
      auth: (cb) => fetchToken(state.user).then((token) => cb({ token }), () => cb({})),
      reconnectionDelay: BACKOFF.min,
      reconnectionDelayMax: BACKOFF.max,
      randomizationFactor: BACKOFF.jitter,
    });
    state.socket = socket;
    setStatus("connecting", "reconnecting");

    socket.on("connect", () => {
      setStatus("connected");
      restore(BACKOFF);
      const missed = state.missedWhileAway;
      state.away = false;
      state.missedWhileAway = 0;
      if (state.joinedOnce && socket.recovered) {
        state.recoveries.push({ missed, recovered: true });
        system("reconnected: recovered " + missed + " message(s)");
        ready();
      } else {
        join();
      }
    });
    socket.on("connect_error", (err) => {
      const data = err && err.data;
      const code = data && data.code ? data.code : err.message;
      state.errors.push({ code, message: data ? data.message : err.message });
      setStatus("connect error: " + code, "error");
      if (code === "draining" || code === "overloaded") {
        // refused by the server, so socket.io will not retry on its own
        setTimeout(() => socket.connect(), 500 + Math.random() * 1500);
      }
    });
    socket.on("disconnect", (reason) => {
      setEnabled(false);
      state.away = true;
      state.typing = [];
      renderTyping();
      if (reason === "io client disconnect") {
        setStatus("disconnected");
        return;
      }
      setStatus("reconnecting (" + reason + ")", "reconnecting");
      if (reason === "io server disconnect") {
        // the server ended this session on purpose (e.g. the token expired): socket.io
        // will not come back by itself, so start over with a fresh token
        setTimeout(() => socket.connect(), 1000 + Math.random() * 2000);
      }
    });
    socket.on("server:shutdown", () => {
      state.shutdownNotice = true;
      system("the server is shutting down; reconnecting…");
    });
    socket.on("message:received", (message) => {
      if (!message || message.roomId !== state.room || state.seen.has(message.id)) return;
      // recovered messages are handed over before `connect` fires again
      if (state.away) state.missedWhileAway += 1;
      show(message, state.away);
    });
    socket.on("user:joined", (event) => {
      if (event.roomId !== state.room) return;
      system(event.userId + " joined");
      refreshPresence();
    });
    socket.on("user:left", (event) => {
      if (event.roomId !== state.room) return;
      system(event.userId + " left");
      state.typing = state.typing.filter((user) => user !== event.userId);
      renderTyping();
      refreshPresence();
    });
    socket.on("typing:user:start", (event) => {
      if (event.roomId === state.room && !state.typing.includes(event.userId)) {
        state.typing.push(event.userId);
        renderTyping();
      }
    });
    socket.on("typing:user:stop", (event) => {
      state.typing = state.typing.filter((user) => user !== event.userId);
      renderTyping();
    });
  }

  // -- typing and sending ------------------------------------------------------------------

  let typingTimer = null;

  function stopTyping() {
    if (typingTimer === null) return;
    clearTimeout(typingTimer);
    typingTimer = null;
    if (state.socket && state.socket.connected) state.socket.emit("typing:stop", state.room, () => {});
  }

  $("#text").addEventListener("input", () => {
    if (!state.socket || !state.socket.connected) return;
    if (typingTimer === null) state.socket.emit("typing:start", state.room, () => {});
    else clearTimeout(typingTimer);
    typingTimer = setTimeout(stopTyping, 2000);
  });

  $("#composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("#text");
    const text = input.value;
    if (!text.trim() || !state.socket) return;
    stopTyping();
    state.socket.emit("message:send", { roomId: state.room, message: text }, (ack) => {
      if (ack && ack.ok) {
        input.value = "";
      } else {
        const error = (ack && ack.error) || { code: "internal", message: "no ack" };
        state.errors.push(error);
        system("not sent: " + error.code + ": " + error.message);
      }
    });
  });

  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    connect();
  });

  $("#drop").addEventListener("click", () => {
    const socket = state.socket;
    if (!socket) return;
    const ms = Number(params.get("drop_ms") || 3000);
    system("dropping the connection for " + ms / 1000 + " s…");
    // the transport drops under the client, as on a network cut; socket.io-client comes
    // back by itself after its back-off, here stretched to `ms` for this one time
    restore({ min: ms, max: ms, jitter: 0 });
    socket.io.engine.close();
    setStatus("dropped", "reconnecting");
  });

  if (typeof io === "undefined") {
    $("#missing-client").hidden = false;
    setStatus("no client library", "error");
  }
  if (params.get("user")) $("#user").value = params.get("user");
  if (params.get("room")) $("#room").value = params.get("room");
  if (params.get("autoconnect")) connect();
})();
