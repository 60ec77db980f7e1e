// setState from one client arrives at a second client, not echoed back to the sender; a
// server-side set_state (increment) reaches both.
import { check, connect, equal, run, waitFor, within } from "./lib.mjs";

await run(async () => {
  const a = connect();
  const b = connect();
  await within(Promise.all([a.client.ready, b.client.ready]), "both ready");

  a.client.setState({ count: 41, from: "a" });
  const got = await waitFor(b.states, (s) => s.state?.from === "a", "state at the second client");
  equal(got, { state: { count: 41, from: "a" }, source: "server" }, "b got a's state from the server");

  // a's own update is reported once, locally ("client"); the server does not echo it
  equal(await within(a.client.call("echo", ["barrier"]), "barrier"), "barrier", "barrier call");
  const aSources = a.states.values.map((s) => s.source);
  equal(aSources, ["server", "client"], "sender saw handshake + its local update only");

  // server-side set_state goes to everyone, the caller included
  equal(await within(a.client.call("increment", [1]), "increment"), 42, "increment result");
  await waitFor(a.states, (s) => s.source === "server" && s.state.count === 42, "a sees 42");
  await waitFor(b.states, (s) => s.state.count === 42, "b sees 42");
  check(a.client.state.count === 42 && b.client.state.count === 42, "client.state updated");

  // a third client joining later gets the current state in its handshake
  const c = connect();
  await within(c.client.ready, "late joiner ready");
  equal(c.client.state, { count: 42, from: "a" }, "late joiner state");
  for (const x of [a, b, c]) x.client.close();
});
