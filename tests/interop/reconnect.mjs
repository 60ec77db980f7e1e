// Reconnect after the server restarts: PartySocket reconnects by itself, the handshake
// brings back the persisted state, and a call issued while disconnected is sent on reconnect.
// Protocol with the test runner: print RESTART_ME, the runner restarts the server.
import { check, connect, equal, makeSink, run, waitFor, within } from "./lib.mjs";

await run(async () => {
  // Not `client.ready` after the drop: every failed attempt while the server is down closes
  // again and replaces the ready promise, orphaning one taken earlier. onIdentity is stable.
  const identities = makeSink();
  const { client, states } = connect({ onIdentity: (name) => identities.push(name) });
  const closes = makeSink();
  client.addEventListener("close", (event) => closes.push(event.code));
  await within(client.ready, "ready");
  client.setState({ count: 7, tag: "before restart" });
  equal(await within(client.call("echo", ["barrier"]), "barrier"), "barrier", "state sent");

  console.log("RESTART_ME");
  const code = await waitFor(closes, () => true, "close event", 15000);
  console.log(`closed with ${code}`);
  check(code !== 1008 && !(code >= 4000 && code <= 4999), "close code is not terminal", code);

  // issued while disconnected: buffered by PartySocket and sent once the socket is back
  const pending = client.call("add", [20, 22]);
  const seen = states.values.length;

  await waitFor(identities, (_, i) => i >= 1, "identified again after reconnect", 15000);
  check(client.identified, "identified after reconnect");
  const after = states.values.slice(seen);
  equal(after[0], { state: { count: 7, tag: "before restart" }, source: "server" },
    "persisted state arrives in the new handshake");
  equal(await within(pending, "call made while disconnected"), 42, "buffered call answered");
  equal(await within(client.call("increment", [1]), "increment"), 8, "state usable after restart");
  client.close();
});
