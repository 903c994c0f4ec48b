'use strict';
// Drives the service with the official socket.io-client and prints one JSON report.
// usage: node scenario.js <url> <aliceToken> <bobToken> <transport: websocket|polling|upgrade>
const { io } = require('socket.io-client');

const [url, aliceToken, bobToken, mode] = process.argv.slice(2);
const transports = mode === 'upgrade' ? ['polling', 'websocket'] : [mode];

function open(token) {
  const socket = io(url, { auth: { token }, transports, reconnection: false, forceNew: true });
  const seen = [];
  socket.onAny((event, payload) => seen.push({ event, payload }));
  return new Promise((resolve, reject) => {
    socket.on('connect', () => resolve({ socket, seen }));
    socket.on('connect_error', (err) => reject(err));
  });
}

function refusal(token) {
  const socket = io(url, { auth: { token }, transports, reconnection: false, forceNew: true });
  return new Promise((resolve) => {
    socket.on('connect_error', (err) => { socket.close(); resolve({ message: err.message, data: err.data }); });
    socket.on('connect', () => { socket.close(); resolve({ connected: true }); });
  });
}

const call = (socket, event, payload) => socket.timeout(5000).emitWithAck(event, payload);
const waitFor = (client, event) => new Promise((resolve, reject) => {
  const started = Date.now();
  const poll = () => {
    const hit = client.seen.find((e) => e.event === event);
    if (hit) return resolve(hit.payload);
    if (Date.now() - started > 5000) return reject(new Error(`no ${event}`));
    setTimeout(poll, 10);
  };
  poll();
});

async function main() {
  const report = {};
  const alice = await open(aliceToken);
  const bob = await open(bobToken);
  report.join = await call(alice.socket, 'join:room', 'js');
  report.joinedEvent = await waitFor(alice, 'joined:room');
  await call(bob.socket, 'join:room', { roomId: 'js' });
  report.userJoined = await waitFor(alice, 'user:joined');
  report.send = await call(alice.socket, 'message:send', { roomId: 'js', message: 'hi from js' });
  report.received = await waitFor(bob, 'message:received');
  report.private = await call(bob.socket, 'message:private', { targetUserId: 'alice', message: 'psst' });
  report.privateReceived = await waitFor(alice, 'message:private:received');
  report.typing = await call(bob.socket, 'typing:start', 'js');
  report.typingEvent = await waitFor(alice, 'typing:user:start');
  report.typingStop = await call(bob.socket, 'typing:stop', 'js');
  report.typingStopEvent = await waitFor(alice, 'typing:user:stop');
  report.history = await call(bob.socket, 'history:get', { roomId: 'js' });
  report.presence = await call(bob.socket, 'presence:get', 'js');
  report.badRoom = await call(bob.socket, 'join:room', 42);
  report.unknown = await call(bob.socket, 'no:such:event', {});
  report.notInRoom = await call(bob.socket, 'message:send', { roomId: 'elsewhere', message: 'x' });
  report.leave = await call(bob.socket, 'leave:room', 'js');
  report.userLeft = await waitFor(alice, 'user:left');
  const more = await call(alice.socket, 'message:send', { roomId: 'js', message: 'while away' });
  report.recovery = await call(bob.socket, 'join:room', { roomId: 'js', since: report.send.id });
  report.moreId = more.id;
  report.transport = alice.socket.io.engine.transport.name;
  report.refused = await refusal('not-a-token');
  alice.socket.close();
  bob.socket.close();
  process.stdout.write(JSON.stringify(report) + '\n');
  process.exit(0); // a polling client would otherwise linger
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ error: String(err && err.message || err) }) + '\n');
  process.exit(1);
});
