// Shared helpers for the interop scripts: every script runs the UNMODIFIED npm `agents`
// client against a callroom server and exits non-zero on the first failed check.
import { AgentClient } from "agents/client";
import WebSocket from "ws";

export const HOST = process.env.CALLROOM_HOST; // "127.0.0.1:PORT"
export const NAME = process.env.AGENT_NAME ?? "default";
const OVERALL_MS = Number(process.env.SCRIPT_TIMEOUT_MS ?? 20000);
export const STEP_MS = 8000;

if (!HOST) fail("CALLROOM_HOST is not set");

// The whole script is bounded: a hang is a failure, never a stuck test run.
const overall = setTimeout(() => fail(`script timed out after ${OVERALL_MS} ms`), OVERALL_MS);

export function fail(message) {
  console.error(`FAIL: ${message}`);
  process.exit(1);
}

export function check(condition, message, detail) {
  if (!condition) fail(`${message}${detail === undefined ? "" : `: ${JSON.stringify(detail)}`}`);
  console.log(`ok - ${message}`);
}

export function equal(actual, expected, message) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) fail(`${message}: expected ${e}, got ${a}`);
  console.log(`ok - ${message}`);
}

export function within(promise, label, ms = STEP_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${label}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with the first value `predicate` accepts among the values pushed to `sink`. */
export function waitFor(sink, predicate, label, ms = STEP_MS) {
  return within(
    new Promise((resolve) => {
      const poll = () => {
        const hit = sink.values.find((value, index) => predicate(value, index));
        if (hit !== undefined) resolve(hit);
        else sink.waiters.push(poll);
      };
      poll();
    }),
    label,
    ms,
  );
}

export function makeSink() {
  const sink = { values: [], waiters: [] };
  sink.push = (value) => {
    sink.values.push(value);
    const waiters = sink.waiters.splice(0);
    for (const w of waiters) w();
  };
  return sink;
}

/** An AgentClient plus sinks recording what its callbacks saw. */
export function connect(options = {}) {
  const states = makeSink();
  const stateErrors = makeSink();
  const connectionErrors = makeSink();
  const client = new AgentClient({
    agent: "Counter",
    name: NAME,
    host: HOST,
    WebSocket,
    // reconnect fast in tests (PartySocket defaults wait seconds)
    minReconnectionDelay: 50,
    maxReconnectionDelay: 300,
    connectionTimeout: 3000,
    onStateUpdate: (state, source) => states.push({ state, source }),
    onStateUpdateError: (error) => stateErrors.push(error),
    onConnectionError: (error) => connectionErrors.push(error),
    ...options,
  });
  return { client, states, stateErrors, connectionErrors };
}

export async function run(main) {
  try {
    await main();
  } catch (error) {
    fail(error?.stack ?? String(error));
  }
  clearTimeout(overall);
  console.log("PASS");
  process.exit(0);
}
