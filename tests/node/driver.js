// Drives the real redis-sessions package for tests/test_interop.py.
//
// Usage: node driver.js <package-folder> <port> <namespace>
//   (or the env vars RS_PACKAGE_DIR, RS_PORT, RS_NAMESPACE)
// <package-folder> is the npm prefix that redis-sessions was installed into.
//
// Reads one JSON command per stdin line, {"op": "get", "args": {...}}, runs them one
// at a time in order, and writes one JSON line per command:
//   {"ok": <result>}  or  {"error": {"name": ..., "message": ...}}
// When stdin ends it quits the Redis connection and exits.
"use strict";

const readline = require("node:readline");

const packageDir = process.argv[2] || process.env.RS_PACKAGE_DIR;
const port = Number(process.argv[3] || process.env.RS_PORT);
const namespace = process.argv[4] || process.env.RS_NAMESPACE;

if (!packageDir || !Number.isInteger(port) || !namespace) {
  process.stderr.write("usage: node driver.js <package-folder> <port> <namespace>\n");
  process.exit(2);
}

const modulePath = require.resolve("redis-sessions", { paths: [packageDir] });
const loaded = require(modulePath);
const RedisSessions = loaded.default || loaded;

const rs = new RedisSessions({ host: "127.0.0.1", port, namespace, wipe: 0 });
// node-redis emits "error" on connection trouble; without a listener it would crash
// the process instead of failing the command that is waiting.
rs.redis.on("error", (err) => process.stderr.write(`redis client error: ${err}\n`));

const OPS = new Set([
  "activity", "create", "get", "kill", "killall", "killsoid", "ping", "set", "soapp", "soid",
]);

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
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (line.trim() === "") continue;
    write(await run(line));
  }
  try {
    await rs.quit();
  } catch (err) {
    process.stderr.write(`quit failed: ${err}\n`);
  }
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`driver crashed: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
