// An unknown agent class is refused with close 1008, which the client treats as terminal:
// onConnectionError fires, pending calls reject, and it does not reconnect.
import { check, connect, equal, run, waitFor, within } from "./lib.mjs";

await run(async () => {
  let opens = 0;
  const { client, connectionErrors } = connect({ agent: "NoSuchAgent" });
  client.addEventListener("open", () => { opens += 1; });
  const error = await waitFor(connectionErrors, () => true, "onConnectionError");
  equal(error.code, 1008, "close code");
  check(error.name === "AgentConnectionError", "AgentConnectionError", error.name);
  check(client.connectionError === error, "client.connectionError set");
  try {
    await within(client.call("add", [1, 2]), "call after terminal close");
    check(false, "call after a terminal close must reject");
  } catch (e) {
    equal(e.message, "Connection closed", "call after a terminal close rejects");
  }
  // PartySocket decided not to reconnect (checked in its state, not by waiting)
  equal(client.shouldReconnect, false, "reconnection stopped after 1008");
  equal(opens, 1, "opened once");
  client.close();
});
