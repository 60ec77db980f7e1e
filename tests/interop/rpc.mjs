// RPC through AgentClient.call / .stub: results, streaming chunks, errors.
import { check, connect, equal, fail, run, within } from "./lib.mjs";

await run(async () => {
  const { client } = connect();
  await within(client.ready, "ready");

  equal(await within(client.call("add", [2, 3]), "call add"), 5, "call('add', [2, 3])");
  equal(await within(client.stub.add(40, 2), "stub add"), 42, "stub.add(40, 2)");
  equal(await within(client.call("echo", [{ a: [1, null] }]), "echo"), { a: [1, null] }, "echo");

  // streaming, current API: { stream: { onChunk, onDone } }
  const chunks = [];
  let doneWith;
  const final = await within(
    client.call("count", [5], {
      stream: { onChunk: (c) => chunks.push(c), onDone: (r) => { doneWith = r; } },
    }),
    "streaming count",
  );
  equal(chunks, [1, 2, 3, 4, 5], "stream chunks in order");
  equal(doneWith, null, "onDone got the final result");
  equal(final, null, "call resolved with the final result");

  // streaming, legacy API: the callbacks as the options object
  const legacy = [];
  await within(client.call("count", [2], { onChunk: (c) => legacy.push(c) }), "legacy stream");
  equal(legacy, [1, 2], "legacy stream callbacks");

  // a stream that fails reaches onError and rejects
  let streamError;
  try {
    await within(
      client.call("count", [-1], { stream: { onChunk: () => {}, onError: (e) => { streamError = e; } } }),
      "failing stream",
    );
    fail("a failing stream resolved");
  } catch (error) {
    check(/between 0 and 10000/.test(error.message), "failing stream rejects", error.message);
  }
  check(/between 0 and 10000/.test(streamError ?? ""), "stream onError called", streamError);

  for (const [method, args, pattern] of [
    ["nope", [], /^Method nope does not exist$/],
    ["not_exposed", [], /^Method not_exposed is not callable$/],
    ["fail", [], /^deliberate failure$/],
    ["add", [1], /^Invalid arguments for add/],
  ]) {
    try {
      await within(client.call(method, args), `call ${method}`);
      fail(`call ${method} resolved`);
    } catch (error) {
      check(pattern.test(error.message), `call ${method} rejects with ${pattern}`, error.message);
    }
  }
  equal(await within(client.call("add", [1, 1]), "after errors"), 2, "still usable after errors");
  client.close();
});
