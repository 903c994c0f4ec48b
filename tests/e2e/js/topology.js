'use strict';
// The official socket.io-client through the sticky load balancer: three users, each with its
// own cookie jar (withCredentials: true keeps the affinity cookie in Node), every protocol
// event across instances, and a cookie-less client as the negative control.
//
// usage: NODE_PATH=tests/js/node_modules node topology.js <url> <mode> <room> <tokens.json>
//   mode: websocket | polling | upgrade; tokens.json: {"alice": jwt, "bob": jwt, "carol": jwt}
// Prints {"stage": "connected", ...}, waits for one line on stdin (the test checks where the
// users landed meanwhile), then prints the report and exits.
const { io } = require('socket.io-client');
const readline = require('readline');

const [url, mode, room, tokensJson] = process.argv.slice(2);
const tokens = JSON.parse(tokensJson);
const transports = mode === 'upgrade' ? ['polling', 'websocket'] : [mode];
const TIMEOUT = 10000;

function affinity(socket) {
  const jar = socket.io.engine && socket.io.engine._cookieJar;
  if (!jar) return null;
  for (const [name, cookie] of jar.cookies) return { name, value: cookie.value };
  return null;
}

function open(token, withCredentials = true) {
  const socket = io(url, {
    auth: { token }, transports, reconnection: false, forceNew: true, withCredentials,
  });
  const seen = [];
  socket.onAny((event, payload) => seen.push({ event, payload }));
  return new Promise((resolve, reject) => {
    socket.on('connect', () => resolve({ socket, seen }));
    socket.on('connect_error', (err) => { socket.close(); reject(err); });
  });
}

const call = (client, event, payload) => client.socket.timeout(TIMEOUT).emitWithAck(event, payload);

function waitFor(client, event, predicate = () => true) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      const hit = client.seen.find((e) => e.event === event && predicate(e.payload));
      if (hit) return resolve(hit.payload);
      if (Date.now() - started > TIMEOUT) return reject(new Error(`no ${event}`));
      setTimeout(poll, 10);
    };
    poll();
  });
}

async function upgraded(client) {
  // the polling -> websocket upgrade happens after connect; give it time to complete
  const started = Date.now();
  while (client.socket.io.engine.transport.name !== 'websocket' && Date.now() - started < TIMEOUT) {
    await new Promise((r) => setTimeout(r, 20));
  }
}

function nextLine() {
  const rl = readline.createInterface({ input: process.stdin });
  return new Promise((resolve) => rl.once('line', (line) => { rl.close(); resolve(line); }));
}

async function main() {
  const users = {};
  for (const name of ['alice', 'bob', 'carol']) users[name] = await open(tokens[name]);
  const { alice, bob, carol } = users;
  if (mode === 'upgrade') for (const c of [alice, bob, carol]) await upgraded(c);
  const cookies = {};
  for (const [name, c] of Object.entries(users)) cookies[name] = affinity(c.socket);
  process.stdout.write(JSON.stringify({ stage: 'connected', cookies }) + '\n');
  await nextLine();

  const r = {};
  r.join = await call(alice, 'join:room', room);
  r.joinedEvent = await waitFor(alice, 'joined:room');
  await call(bob, 'join:room', { roomId: room });
  r.userJoined = await waitFor(alice, 'user:joined', (p) => p.userId === 'bob');
  await call(carol, 'join:room', room);
  await waitFor(bob, 'user:joined', (p) => p.userId === 'carol');
  r.send = await call(alice, 'message:send', { roomId: room, message: 'hello from alice' });
  r.receivedByBob = await waitFor(bob, 'message:received');
  r.receivedByCarol = await waitFor(carol, 'message:received');
  r.private = await call(bob, 'message:private', { targetUserId: 'carol', message: 'psst' });
  r.privateReceived = await waitFor(carol, 'message:private:received');
  r.typing = await call(carol, 'typing:start', room);
  r.typingSeen = [await waitFor(alice, 'typing:user:start'), await waitFor(bob, 'typing:user:start')];
  r.typingStop = await call(carol, 'typing:stop', room);
  r.typingStopSeen = [await waitFor(alice, 'typing:user:stop'), await waitFor(bob, 'typing:user:stop')];
  r.history = await call(carol, 'history:get', { roomId: room });
  r.presence = await call(bob, 'presence:get', room);
  r.leave = await call(carol, 'leave:room', room);
  r.userLeft = await waitFor(alice, 'user:left');
  r.whileAway = await call(alice, 'message:send', { roomId: room, message: 'while carol was away' });
  r.rejoin = await call(carol, 'join:room', { roomId: room, since: r.send.id });
  r.badRoom = await call(bob, 'join:room', 42);
  r.unknown = await call(bob, 'no:such:event', {});
  r.notInRoom = await call(bob, 'message:send', { roomId: 'elsewhere', message: 'x' });
  r.typingEchoedToSender = carol.seen.some((e) => e.event.startsWith('typing:user:'));
  r.transports = Object.fromEntries(
    Object.entries(users).map(([name, c]) => [name, c.socket.io.engine.transport.name]));
  for (const c of [alice, bob, carol]) c.socket.close();

  if (mode === 'polling') {
    // negative control: the same client without a cookie jar loses its session
    try {
      const lost = await open(tokens.alice, false);
      lost.socket.close();
      r.cookieless = { connected: true };
    } catch (err) {
      r.cookieless = { connected: false, message: String(err.message), description: String(err.description || '') };
    }
  }
  process.stdout.write(JSON.stringify({ stage: 'report', report: r }) + '\n');
  process.exit(0); // a polling client would otherwise linger
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ stage: 'error', error: String((err && err.message) || err) }) + '\n');
  process.exit(1);
});
