'use strict';
// The official socket.io-client when its token expires: the server sends auth:expired and
// disconnects; the application refreshes the token and reconnects. Prints one JSON report.
// usage: node expiry.js <url> <shortToken> <freshToken> <transport: websocket|polling>
const { io } = require('socket.io-client');

const [url, shortToken, freshToken, transport] = process.argv.slice(2);
const report = {};
const socket = io(url, { auth: { token: shortToken }, transports: [transport], forceNew: true });

const timer = setTimeout(() => {
  console.log(JSON.stringify({ ...report, timedOut: true }));
  process.exit(1);
}, 20000);

socket.on('auth:expired', (payload) => {
  report.expired = payload;
  socket.auth = { token: freshToken };
});
socket.on('disconnect', (reason) => {
  report.disconnectReason = reason;
  if (report.expired) socket.connect(); // "io server disconnect": no automatic reconnect
});
socket.on('connect', () => {
  report.connects = (report.connects || 0) + 1;
  if (report.connects < 2) return;
  socket.emit('join:room', 'nowhere', (ack) => {
    report.afterRefresh = ack;
    clearTimeout(timer);
    console.log(JSON.stringify(report));
    process.exit(0);
  });
});
