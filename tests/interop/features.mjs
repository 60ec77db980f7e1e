// Errors and extras against tests/integration/apps/features.py: readonly and validator
// refusals reach onStateUpdateError, plain messages reach on_message, agentFetch reaches
// on_request, a `query` token passes on_before_connect and a missing one is refused.
import { agentFetch } from "agents/client";
import { HOST, NAME, check, connect, equal, makeSink, run, waitFor, within } from "./lib.mjs";

await run(async () => {
  const rw = connect({ agent: "Features" });
  const ro = connect({ agent: "Features", query: { readonly: "1" } });
  await within(Promise.all([rw.client.ready, ro.client.ready]), "both ready");
  equal(rw.client.agent, "features", "kebab namespace");

  ro.client.setState({ items: ["from readonly"], version: 1 });
  equal(await waitFor(ro.stateErrors, () => true, "readonly error"), "Connection is readonly",
    "readonly connection refused");

  rw.client.setState({ forbidden: true });
  equal(await waitFor(rw.stateErrors, () => true, "validator error"), "State update rejected",
    "validator refusal");
  equal(await within(rw.client.call("get_state", []), "get_state"), { items: [], version: 0 },
    "server state unchanged by refused updates");

  // a plain (non-protocol) message goes to on_message, which echoes it
  const echoes = makeSink();
  rw.client.addEventListener("message", (e) => {
    const msg = JSON.parse(e.data);
    if (msg.type === "echo") echoes.push(msg.data);
  });
  rw.client.send("hello on_message");
  equal(await waitFor(echoes, () => true, "echo"), "hello on_message", "on_message echo");

  // HTTP to the same agent through agentFetch
  const res = await within(
    agentFetch({ agent: "Features", name: NAME, host: HOST }, { method: "POST", body: "note" }),
    "agentFetch",
  );
  equal(res.status, 200, "agentFetch status");
  const body = await res.json();
  equal([body.name, body.method, body.notes], [NAME, "POST", ["note"]], "on_request answer");

  // on_before_connect: the query token is passed through PartySocket's `query`
  const ok = connect({ agent: "Guarded", query: { token: "s3cret" } });
  await within(ok.client.ready, "guarded ready");
  equal(await within(ok.client.call("whoami", []), "whoami"), NAME, "guarded call");

  const refused = connect({ agent: "Guarded", maxRetries: 1 });
  const error = await waitFor(refused.connectionErrors, () => true, "refusal surfaces");
  check(error.name === "AgentConnectionError", "refused upgrade ends in a connection error");
  check(!refused.client.identified, "never identified");

  for (const x of [rw, ro, ok, refused]) x.client.close();
});
