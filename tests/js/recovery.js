'use strict';
// The official socket.io-client with its defaults (reconnection on, its own back-off) and no
// recovery code of its own: what an application gets from `io(url, {auth: {token}})`.
//
// usage: node recovery.js <url> <transport> <token>
// Writes one JSON line per thing that happens:
//   {ev: "connect", recovered, cookie}    cookie: the load balancer's affinity cookie, if any
//   {ev: "disconnect", reason}            {ev: "connect_error", message, data}
//   {ev: "message", id, roomId, text}     every message:received, in the order handed over
//   {ev: "shutdown"}                      server:shutdown    {ev: "ack", cmd, ack}
// and reads commands, one per line:
//   join ROOM | presence ROOM | history ROOM  -> {ev: "ack", ...}
//   drop   the transport drops under the client (socket.io.engine.close(), what socket.io's
//          own tests use to simulate a network cut); the client reconnects by itself
//   exit
const { io } = require('socket.io-client');
const readline = require('readline');

const [url, transport, token] = process.argv.slice(2);
const socket = io(url, { auth: { token }, transports: [transport], withCredentials: true });
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

function affinity() {
  const jar = socket.io.engine && socket.io.engine._cookieJar;
  if (!jar) return null;
  for (const [, cookie] of jar.cookies) return cookie.value;
  return null;
}

socket.on('connect', () => out({ ev: 'connect', recovered: socket.recovered, cookie: affinity() }));
socket.on('disconnect', (reason) => out({ ev: 'disconnect', reason }));
socket.on('connect_error', (err) => out({ ev: 'connect_error', message: err.message, data: err.data || null }));
socket.on('server:shutdown', () => out({ ev: 'shutdown' }));
socket.on('message:received', (m) => out({ ev: 'message', id: m.id, roomId: m.roomId, text: m.message }));

const EVENTS = { join: 'join:room', presence: 'presence:get', history: 'history:get' };
readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const [cmd, arg] = line.trim().split(/\s+/);
  if (cmd === 'exit') process.exit(0);
  if (cmd === 'drop') {
    socket.io.engine.close();
    return;
  }
  if (EVENTS[cmd]) {
    try {
      out({ ev: 'ack', cmd, ack: await socket.timeout(10000).emitWithAck(EVENTS[cmd], arg) });
    } catch (err) {
      out({ ev: 'ack', cmd, error: String(err.message || err) });
    }
  }
});
