// Drives the real redis-sessions package for tests/test_interop.py.
//
// Usage: node driver.js <package-folder> <port> <namespace> [<cachetime>]
//   (or the env vars RS_PACKAGE_DIR, RS_PORT, RS_NAMESPACE, RS_CACHETIME)
// <package-folder> is the npm prefix that redis-sessions was installed into.
// <cachetime> (seconds, default 0 = off) turns on redis-sessions' own LRU cache: it
// then subscribes to `<namespace>:cache`, drops `<app>:<token>` from its cache on each
// message there, and publishes `<app>:<token>` on every set, kill, killall and killsoid.
//
// Reads one JSON command per stdin line, {"op": "get", "args": {...}}, runs them one
// at a time in order, and writes one JSON line per command:
//   {"ok": <result>}  or  {"error": {"name": ..., "message": ...}}
// Besides the redis-sessions calls there are two driver ops that look without changing:
//   "driver": {"cachetime": <number>, "cache": <bool>, "subscribed": <bool>}
//   "cached" (args app, token): whether Node's cache holds that session right now.
//   "heard" (args app, token): when (unix ms, fractional) the last message naming that
//     session reached Node's subscriber, or null; redis-sessions' own listener runs
//     just before, on the same message.
// With a cachetime, nothing is read from stdin before Node's subscription is confirmed
// by the server, so no invalidation published after the first answer can be missed.
// When stdin ends it quits the Redis connections and exits.
"use strict";

const readline = require("node:readline");

const packageDir = process.argv[2] || process.env.RS_PACKAGE_DIR;
const port = Number(process.argv[3] || process.env.RS_PORT);
const namespace = process.argv[4] || process.env.RS_NAMESPACE;
const cachetime = Number(process.argv[5] || process.env.RS_CACHETIME || 0);

if (!packageDir || !Number.isInteger(port) || !namespace || !(cachetime >= 0)) {
  process.stderr.write(
    "usage: node driver.js <package-folder> <port> <namespace> [<cachetime>]\n",
  );
  process.exit(2);
}

const modulePath = require.resolve("redis-sessions", { paths: [packageDir] });
const loaded = require(modulePath);
const RedisSessions = loaded.default || loaded;

const rs = new RedisSessions({ host: "127.0.0.1", port, namespace, wipe: 0, cachetime });
// node-redis emits "error" on connection trouble; without a listener it would crash
// the process instead of failing the command that is waiting.
rs.redis.on("error", (err) => process.stderr.write(`redis client error: ${err}\n`));
if (rs.redissub) {
  rs.redissub.on("error", (err) => process.stderr.write(`redis subscriber error: ${err}\n`));
}
let subscribed = false;

const OPS = new Set([
  "activity", "create", "get", "kill", "killall", "killsoid", "ping", "set", "soapp", "soid",
]);

const DRIVER_OPS = {
  driver: () => ({ cachetime, cache: rs.isCache, subscribed }),
  cached: (args) => {
    if (!rs.sessionCache) return false;
    // has() neither refreshes the entry's age nor its place in the LRU order.
    return rs.sessionCache.has(`${args.app}:${args.token}`);
  },
  heard: (args) => heard.get(`${args.app}:${args.token}`) ?? null,
};
const heard = new Map();

function write(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

async function run(line) {
  let command;
  try {
    command = JSON.parse(line);
  } catch (err) {
    return { error: { name: "driverError", message: `bad JSON command: ${err.message}` } };
  }
  if (Object.hasOwn(DRIVER_OPS, command.op)) {
    return { ok: DRIVER_OPS[command.op](command.args || {}) };
  }
  if (!OPS.has(command.op)) {
    return { error: { name: "driverError", message: `unknown op ${JSON.stringify(command.op)}` } };
  }
  try {
    const result = await rs[command.op](command.args || {});
    return { ok: result === undefined ? null : result };
  } catch (err) {
    const name = err && err.name ? String(err.name) : "Error";
    const message = err && err.message !== undefined ? String(err.message) : String(err);
    return { error: { name, message } };
  }
}

async function main() {
  // The constructor starts connecting (toConnect) and, with a cachetime, subscribing
  // (toSubscribe). redis-sessions itself awaits toSubscribe only in its writes, and
  // ping() awaits toConnect alone; node-redis resolves subscribe() when the server's
  // "subscribe" reply arrives, which is also when it attaches the message listener.
  // Awaiting both here means every message published after our first answer is heard.
  await rs.toConnect;
  subscribed = (await rs.toSubscribe) === true && rs.isCache;
  if (subscribed) {
    // A second listener on the channel already subscribed: node-redis sends nothing.
    await rs.redissub.subscribe(`${namespace}:cache`, (message) => {
      heard.set(message, performance.timeOrigin + performance.now());
    });
  }
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (line.trim() === "") continue;
    write(await run(line));
  }
  try {
    await rs.quit();
    // quit() of redis-sessions 4.0.0 leaves the subscriber connection open.
    if (rs.redissub) await rs.redissub.quit();
  } catch (err) {
    process.stderr.write(`quit failed: ${err}\n`);
  }
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`driver crashed: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
