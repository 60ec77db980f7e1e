// callroom playground: calls a voice agent of this server from the browser.
//
// It speaks voice protocol v1 of the npm `agents` package directly over one WebSocket to
// /agents/<class>/<name>: JSON `hello`, `start_call`, `end_call`, `text_message` out, 20 ms
// frames of PCM16 16 kHz mono microphone audio as binary frames out; status, transcripts,
// metrics and PCM16 speech (at the `sampleRate` of `audio_config`) in. Turn detection and
// barge-in are the server's job: the page keeps sending the microphone while the agent talks.

const $ = (id) => document.getElementById(id);

const MIC_RATE = 16000; // what the server expects
const FRAME_SAMPLES = 320; // 20 ms at 16 kHz
const PLAYBACK_LEAD_S = 0.05; // a chunk after a gap starts this far ahead (absorbs jitter)
const MAX_BUFFERED_BYTES = 256 * 1024; // stalled socket: drop mic frames instead of queueing

// Everything the page knows; the browser test reads it too (`window.playground`).
const playground = {
  connection: "closed", // closed | connecting | open
  inCall: false,
  status: "idle", // the server's: idle | listening | thinking | speaking
  audioConfig: null,
  transcript: [], // {role: "user" | "assistant" | "system", text, interrupted?}
  interim: "",
  metrics: [], // the `metrics` messages, in order
  turnMetrics: [], // the `turn_metrics` messages
  errors: [],
  stats: {
    messagesIn: 0, framesSent: 0, framesDropped: 0, bytesSent: 0,
    audioChunks: 0, audioBytes: 0, audioSeconds: 0, interrupts: 0,
    cutChunks: 0, // scheduled chunks silenced by barge-in or hang-up
  },
};
window.playground = playground;

let ws = null; // the socket of the current agent + call id
let wsKey = ""; // "<class>/<name>" of `ws`
let callReady = false; // audio_config received: the server takes microphone audio
let audio = null; // the call's AudioContext (capture and playback)
let mic = null; // {stream, source, node, sink}
let player = null;

// -- UI helpers ------------------------------------------------------------------------------
function showError(message) {
  playground.errors.push(message);
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setConnection(state) {
  playground.connection = state;
  $("connection").textContent = state;
}

function setStatus(status) {
  playground.status = status;
  const el = $("status");
  el.textContent = status;
  el.className = `status ${status}`;
}

function setCallButton(mode) { // "call" | "busy" | "hangup"
  const button = $("call");
  button.textContent = mode === "hangup" ? "Hang up" : mode === "busy" ? "Calling…" : "Call";
  button.classList.toggle("hangup", mode === "hangup");
  button.disabled = mode === "busy" || !$("agent").value;
  $("agent").disabled = mode !== "call";
  $("call-id").disabled = mode !== "call";
  $("new-id").disabled = mode !== "call";
}

function randomCallId() {
  const bytes = crypto.getRandomValues(new Uint8Array(4));
  return "call-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// -- transcript --------------------------------------------------------------------------------
const lineElements = new Map(); // transcript entry → its <li>
let streaming = null; // the assistant entry being streamed
let interimEl = null; // the <li> of the caller's interim text, always last

function render(entry) {
  const li = lineElements.get(entry);
  li.textContent = entry.text;
  li.classList.toggle("streaming", entry === streaming);
  li.classList.toggle("interrupted", Boolean(entry.interrupted));
}

function addLine(role, text, extraClass = "") {
  const entry = { role, text };
  playground.transcript.push(entry);
  const li = document.createElement("li");
  li.className = `${role} ${extraClass}`.trim();
  lineElements.set(entry, li);
  const list = $("transcript");
  list.insertBefore(li, interimEl && interimEl.isConnected ? interimEl : null);
  render(entry);
  list.scrollTop = list.scrollHeight;
  return entry;
}

function setInterim(text) {
  playground.interim = text;
  if (!text) {
    if (interimEl) interimEl.remove();
    return;
  }
  if (!interimEl) {
    interimEl = document.createElement("li");
    interimEl.className = "interim";
  }
  interimEl.textContent = text;
  const list = $("transcript");
  list.appendChild(interimEl);
  list.scrollTop = list.scrollHeight;
}

function finishStreaming(fullText) {
  const entry = streaming;
  if (!entry) return;
  if (typeof fullText === "string" && fullText) entry.text = fullText;
  streaming = null;
  render(entry);
}

function markInterrupted() {
  // The reply the caller talked over: the last assistant line after their last words.
  for (let i = playground.transcript.length - 1; i >= 0; i--) {
    const entry = playground.transcript[i];
    if (entry.role === "user") return;
    if (entry.role === "assistant") {
      entry.interrupted = true;
      if (entry === streaming) streaming = null;
      render(entry);
      return;
    }
  }
}

// -- latency table -----------------------------------------------------------------------------
const STAGES = ["eot_ms", "stt_ms", "llm_ms", "tts_ms", "first_audio_ms", "total_ms"];

function addMetrics(msg) {
  playground.metrics.push(msg);
  // callroom's own offsets from the end of the caller's speech ride under `callroom`; the
  // top-level fields are the npm client's (different origins), used only as a fallback.
  const stages = msg.callroom || { first_audio_ms: msg.first_audio_ms, total_ms: msg.total_ms };
  const row = document.createElement("tr");
  const cells = [String(playground.metrics.length)];
  for (const key of STAGES) {
    const v = stages[key];
    cells.push(typeof v === "number" ? String(Math.round(v)) : "–");
  }
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }
  $("metrics").appendChild(row);
}

// -- playback: PCM16 chunks scheduled back to back on one AudioContext --------------------------
class Player {
  constructor(ctx) {
    this.ctx = ctx;
    this.rate = 16000; // replaced by audio_config's sampleRate
    this.next = 0; // context time where the next chunk starts
    this.sources = new Set();
  }

  get endTime() {
    return Math.max(this.next, this.ctx.currentTime);
  }

  play(bytes) {
    const view = new DataView(bytes);
    const n = bytes.byteLength >> 1;
    if (!n || this.ctx.state === "closed") return;
    const buffer = this.ctx.createBuffer(1, n, this.rate); // the context resamples if needed
    const out = buffer.getChannelData(0);
    for (let i = 0; i < n; i++) out[i] = view.getInt16(2 * i, true) / 32768;
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.ctx.destination);
    const now = this.ctx.currentTime;
    if (this.next < now) this.next = now + PLAYBACK_LEAD_S; // first chunk, or we ran dry
    source.start(this.next);
    this.next += buffer.duration; // the next chunk starts exactly where this one ends
    this.sources.add(source);
    source.onended = () => {
      this.sources.delete(source);
      this.changed();
    };
    this.changed();
  }

  stop() { // barge-in or hang-up: silence now, forget the schedule
    for (const source of this.sources) {
      source.onended = null;
      try { source.stop(); } catch { /* already stopped */ }
      playground.stats.cutChunks++;
    }
    this.sources.clear();
    this.next = 0;
    this.changed();
  }

  changed() {
    $("playing").hidden = this.sources.size === 0;
  }
}

// -- microphone: getUserMedia → AudioWorklet (PCM16 16 kHz, 20 ms frames) → socket --------------
async function openMic(ctx) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !ctx.audioWorklet) {
    throw new Error(
      "The microphone needs a secure page: open the playground over https or on localhost.");
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true,
             autoGainControl: true },
  });
  await ctx.audioWorklet.addModule("/static/mic-worklet.js");
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "pcm16-capture", {
    processorOptions: { targetRate: MIC_RATE, frameSamples: FRAME_SAMPLES },
  });
  // A muted path to the speakers keeps the node pulled by the audio graph in every browser.
  const sink = ctx.createGain();
  sink.gain.value = 0;
  source.connect(node).connect(sink).connect(ctx.destination);
  node.port.onmessage = (ev) => sendMicFrame(ev.data.pcm, ev.data.rms);
  return { stream, source, node, sink };
}

function sendMicFrame(pcm, rms) {
  $("level").style.width = `${Math.min(100, Math.round(Math.sqrt(rms) * 200))}%`;
  if (!callReady || !ws || ws.readyState !== WebSocket.OPEN) return;
  if (ws.bufferedAmount > MAX_BUFFERED_BYTES) {
    playground.stats.framesDropped++;
    return;
  }
  ws.send(pcm); // barge-in: keep sending while the agent speaks, the server decides
  playground.stats.framesSent++;
  playground.stats.bytesSent += pcm.byteLength;
}

function closeMic() {
  if (!mic) return;
  mic.node.port.onmessage = null;
  mic.source.disconnect();
  mic.node.disconnect();
  for (const track of mic.stream.getTracks()) track.stop();
  mic = null;
  $("level").style.width = "0";
}

// -- the socket --------------------------------------------------------------------------------
function selection() {
  return { segment: $("agent").value, name: $("call-id").value.trim() };
}

function agentUrl(segment, name) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // Query parameters of the page (e.g. ?token=…) go along for the server's auth hook.
  return `${scheme}//${location.host}/agents/${encodeURIComponent(segment)}/` +
    `${encodeURIComponent(name)}${location.search}`;
}

function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

// Resolves once the agent greeted the connection (`welcome`, then its first `status`).
function openSocket() {
  const { segment, name } = selection();
  const key = `${segment}/${name}`;
  if (ws && wsKey === key && ws.readyState <= WebSocket.OPEN) return ws.ready; // reuse it
  closeSocket();
  const url = agentUrl(segment, name);
  const sock = new WebSocket(url);
  sock.binaryType = "arraybuffer";
  ws = sock;
  wsKey = key;
  setConnection("connecting");
  sock.ready = new Promise((resolve, reject) => {
    let opened = false;
    let welcomed = false;
    const timer = setTimeout(() => {
      if (sock === ws && !sock.voiceReady) {
        reject(new Error(`/agents/${key} did not answer the voice protocol (no welcome).`));
        closeSocket();
      }
    }, 10000);
    sock.onopen = () => {
      opened = true;
      setConnection("open");
      sock.send(JSON.stringify({ type: "hello", protocol_version: 1 }));
    };
    sock.onmessage = (ev) => {
      if (sock !== ws) return;
      if (typeof ev.data !== "string") return onAudio(ev.data);
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      playground.stats.messagesIn++;
      if (msg.type === "welcome") welcomed = true;
      if (!sock.voiceReady && welcomed && msg.type === "status") {
        sock.voiceReady = true; // the connect-time `status: idle` is behind us
        clearTimeout(timer);
        setStatus(msg.status);
        resolve(sock);
        return;
      }
      onMessage(msg);
    };
    sock.onclose = (ev) => {
      clearTimeout(timer);
      if (sock !== ws) return; // closed on purpose (closeSocket)
      ws = null;
      setConnection("closed");
      const why = `code ${ev.code}${ev.reason ? `: ${closeReason(ev.reason)}` : ""}`;
      const message = opened
        ? `The connection to /agents/${key} closed (${why}).`
        : `Could not connect to /agents/${key} (${why}): the server refused it or is down.`;
      if (!sock.voiceReady) reject(new Error(message));
      else showError(message);
      endCallLocally({ graceful: false });
      setStatus("idle");
    };
  });
  return sock.ready;
}

// callroom puts its JSON error body in the close reason of a refused socket.
function closeReason(reason) {
  try { return JSON.parse(reason).error || reason; } catch { return reason; }
}

function closeSocket() {
  const sock = ws;
  ws = null;
  wsKey = "";
  if (sock) sock.close(1000, "bye");
  setConnection("closed");
}

// -- server → page -----------------------------------------------------------------------------
function onAudio(bytes) {
  playground.stats.audioChunks++;
  playground.stats.audioBytes += bytes.byteLength;
  if (player && playground.inCall) {
    playground.stats.audioSeconds += (bytes.byteLength >> 1) / player.rate;
    player.play(bytes);
  }
}

function onMessage(msg) {
  switch (msg.type) {
    case "status":
      setStatus(msg.status);
      if (msg.status === "idle" && playground.inCall && callReady) {
        addLine("system", "The agent ended the call.");
        endCallLocally({ graceful: true }); // let its last words play out
      }
      break;
    case "audio_config":
      playground.audioConfig = msg;
      if (msg.format !== "pcm16") {
        showError(`The server sends ${msg.format} audio; this page plays pcm16 only.`);
      }
      if (player) player.rate = msg.sampleRate || 16000;
      callReady = true;
      break;
    case "transcript_interim":
      setInterim(msg.text || "");
      break;
    case "transcript":
      setInterim("");
      if (msg.role === "assistant") finishStreaming();
      addLine(msg.role === "assistant" ? "assistant" : "user", msg.text || "");
      break;
    case "transcript_start":
      finishStreaming();
      streaming = addLine("assistant", "");
      render(streaming);
      break;
    case "transcript_delta":
      if (!streaming) streaming = addLine("assistant", "");
      streaming.text += msg.text || "";
      render(streaming);
      break;
    case "transcript_end":
      finishStreaming(msg.text);
      break;
    case "playback_interrupt":
      playground.stats.interrupts++;
      if (player) player.stop();
      markInterrupted();
      break;
    case "metrics":
      addMetrics(msg);
      break;
    case "turn_metrics":
      playground.turnMetrics.push(msg);
      break;
    case "completion_outcome":
      addLine("system", `The model gave no usable answer (${msg.code}).`, "bad");
      break;
    case "error": {
      if (!playground.inCall && msg.stage === "protocol" && /audio/i.test(msg.message || "")) {
        // Microphone frames that were in flight when the agent hung up: harmless.
        console.info("ignored after the call:", msg.message);
        break;
      }
      const detail = [msg.code, msg.stage].filter(Boolean).join(", ");
      showError(`Agent error: ${msg.message}${detail ? ` (${detail})` : ""}`);
      addLine("system", msg.message, "bad");
      break;
    }
    default: // core frames (identity, state, MCP, rpc) and the agent's own messages
      break;
  }
}

// -- call control ------------------------------------------------------------------------------
async function startCall() {
  clearError();
  const { segment, name } = selection();
  if (!segment) return showError("Pick an agent first.");
  if (!$("call-id").checkValidity() || !name) {
    return showError("The call id may use letters, digits, '.', '_' and '-' (1–128 characters).");
  }
  setCallButton("busy");
  try {
    // Created inside the click, so the browser lets it play sound. Its rate is the device's;
    // the worklet downsamples the microphone, and PCM16 buffers at any rate play on it.
    audio = new AudioContext();
    await audio.resume();
    player = new Player(audio);
    mic = await openMic(audio);
    await openSocket();
    playground.inCall = true;
    callReady = false;
    send({ type: "start_call", preferred_format: "pcm16" });
    setCallButton("hangup");
  } catch (err) {
    showError(describe(err));
    endCallLocally({ graceful: false });
  }
}

function hangUp() {
  send({ type: "end_call" });
  endCallLocally({ graceful: false });
}

// Local clean-up of a call; `graceful` lets scheduled speech finish before the audio stops.
function endCallLocally({ graceful }) {
  playground.inCall = false;
  callReady = false;
  closeMic();
  const ctx = audio;
  const p = player;
  audio = null;
  player = null;
  if (ctx) {
    const wait = graceful && p ? Math.max(0, p.endTime - ctx.currentTime) : 0;
    setTimeout(() => {
      if (p) p.stop();
      ctx.close().catch(() => {});
    }, wait * 1000 + 50);
  }
  setCallButton("call");
}

async function sendText(text) {
  clearError();
  try {
    await openSocket(); // outside a call the agent answers in text only
    send({ type: "text_message", text });
  } catch (err) {
    showError(describe(err));
  }
}

function describe(err) {
  const name = err && err.name;
  if (name === "NotAllowedError") {
    return "Microphone access was denied: allow the microphone for this page and call again.";
  }
  if (name === "NotFoundError") return "No microphone was found.";
  if (name === "NotReadableError") return "The microphone is busy or unavailable.";
  return (err && err.message) || String(err);
}

// -- start-up ----------------------------------------------------------------------------------
async function loadAgents() {
  // Opened at /agents/<class>/<name>? Then that agent and call id are preselected.
  const m = location.pathname.match(/^\/agents\/([^/]+)\/([^/]+)\/?$/);
  const wanted = m ? decodeURIComponent(m[1]) : "";
  $("call-id").value = m ? decodeURIComponent(m[2]) : randomCallId();
  const select = $("agent");
  let agents = [];
  try {
    const resp = await fetch("/api/agents");
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    agents = (await resp.json()).agents;
  } catch (err) {
    showError(`Could not list the agents of this server (${describe(err)}).`);
  }
  select.replaceChildren();
  for (const a of agents) {
    const option = new Option(`${a.class} (${a.segment})`, a.segment);
    option.title = a.description || "";
    select.appendChild(option);
  }
  if (wanted && !agents.some((a) => a.segment === wanted)) select.appendChild(new Option(wanted));
  if (wanted) select.value = wanted;
  if (!select.options.length && !playground.errors.length) {
    showError("This server has no voice agents (subclasses of VoiceAgent).");
  }
  setCallButton("call");
}

function init() {
  $("call").addEventListener("click", () => (playground.inCall ? hangUp() : startCall()));
  $("new-id").addEventListener("click", () => {
    $("call-id").value = randomCallId();
    closeSocket();
  });
  // Another agent or call id is another conversation: drop the idle socket.
  $("agent").addEventListener("change", closeSocket);
  $("call-id").addEventListener("change", closeSocket);
  $("text-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("text").value.trim();
    if (!text) return;
    $("text").value = "";
    sendText(text);
  });
  window.addEventListener("error", (ev) => showError(`Page error: ${ev.message}`));
  window.addEventListener("unhandledrejection", (ev) => showError(`Page error: ${describe(ev.reason)}`));
  loadAgents();
}

init();
