// Identity + state handshake: `ready` resolves only after the state (stateFollows), and the
// state arrives through onStateUpdate with source "server".
import { NAME, check, connect, equal, run, within } from "./lib.mjs";

await run(async () => {
  const { client, states } = connect();
  await within(client.ready, "ready");
  check(client.identified, "identified after ready");
  equal(client.agent, "counter", "agent namespace from the identity frame");
  equal(client.name, NAME, "instance name from the identity frame");
  // ready waits for the state frame when the identity says stateFollows
  equal(states.values[0], { state: { count: 0 }, source: "server" }, "state before ready");
  equal(client.state, { count: 0 }, "client.state is current once ready");
  client.close();
});
