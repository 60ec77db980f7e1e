// Prints {className: namespace} as the npm client computes it (argv[2] = JSON list).
import { AgentClient } from "agents/client";
import WebSocket from "ws";

const names = JSON.parse(process.argv[2]);
const out = {};
for (const agent of names) {
  const client = new AgentClient({ agent, host: "127.0.0.1:9", WebSocket, startClosed: true });
  out[agent] = client.agent;
  client.close();
}
console.log(JSON.stringify(out));
process.exit(0);
