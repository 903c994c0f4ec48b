// The dev demo: the official socket.io client against the service's protocol (docs/protocol.md).
// After a reconnect it rejoins with `since` = the last id it saw, merges `missed` with any
// live message that raced the ack, and shows each message once, in id order.
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
    joining: false,
    buffer: [],
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

  function join() {
    const socket = state.socket;
    const first = !state.joinedOnce;
    state.joining = true;
    state.buffer = [];
    const payload = first ? { roomId: state.room } : { roomId: state.room, since: state.lastId || "0-0" };
    socket.emit("join:room", payload, (ack) => {
      state.joining = false;
      const held = state.buffer;
      state.buffer = [];
      if (!ack || !ack.ok) {
        const error = (ack && ack.error) || { code: "internal", message: "no ack" };
        state.errors.push(error);
        system("join refused: " + error.code + ": " + error.message);
        return;
      }
      if (first) {
        ack.history.forEach((m) => show(m, false));
        held.sort(byId).forEach((m) => show(m, false));
        state.joinedOnce = true;
        system("joined " + state.room + " as " + state.user);
      } else {
        const fresh = (ack.missed || []).concat(held).sort(byId).filter((m) => !state.seen.has(m.id));
        fresh.forEach((m) => show(m, true));
        state.recoveries.push({ missed: fresh.length, recovered: ack.recovered !== false });
        system("reconnected: recovered " + fresh.length + " message(s)" +
          (ack.recovered === false ? " — older ones were no longer kept" : ""));
      }
      $("#room-name").textContent = state.room;
      setEnabled(true);
      refreshPresence();
    });
  }

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
      reconnectionDelay: 500,
      reconnectionDelayMax: 5000,
      randomizationFactor: 0.5,
    });
    state.socket = socket;
    setStatus("connecting", "reconnecting");

    socket.on("connect", () => {
      setStatus("connected");
      join();
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
      state.typing = [];
      renderTyping();
      if (reason === "io client disconnect") {
        setStatus("disconnected");
        return;
      }
      setStatus("reconnecting (" + reason + ")", "reconnecting");
      if (reason === "io server disconnect") {
        // socket.io does not reconnect after a server-side disconnect: after a drain we do
        const delay = state.shutdownNotice ? 250 + Math.random() * 750 : 1000 + Math.random() * 2000;
        state.shutdownNotice = false;
        setTimeout(() => socket.connect(), delay);
      }
    });
    socket.on("server:shutdown", () => {
      state.shutdownNotice = true;
      system("the server is shutting down; reconnecting…");
    });
    socket.on("message:received", (message) => {
      if (!message || message.roomId !== state.room) return;
      if (state.joining) state.buffer.push(message);
      else show(message, false);
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
    socket.disconnect();
    setStatus("dropped", "reconnecting");
    setTimeout(() => socket.connect(), ms);
  });

  if (typeof io === "undefined") {
    $("#missing-client").hidden = false;
    setStatus("no client library", "error");
  }
  if (params.get("user")) $("#user").value = params.get("user");
  if (params.get("room")) $("#room").value = params.get("room");
  if (params.get("autoconnect")) connect();
})();
