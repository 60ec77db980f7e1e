// The UNMODIFIED npm `VoiceClient` (agents/voice/client) in Node 20 against a real callroom
// serving tests/integration/apps/voice_fake.py (`FakeVoice`: a tone is speech, the STT says
// "I spoke for N.N seconds.", the TTS is a 220 Hz tone of 0.25 s per word at 16 kHz).
//
//   node voice_client.mjs <host:port> <agent-name> [call|reconnect]
//
// `call` (default): a whole call — status idle → listening → speaking (greeting) → listening,
// a spoken turn (thinking → speaking → listening, user + assistant transcripts, PCM played
// through the fake AudioContext), a barge-in over a long reply (the client's own interrupt
// detector stops playback and sends `interrupt`; the server acknowledges it and cuts history
// to what was heard), `endCall()` → idle, and a call the agent hangs up ("bye").
// `reconnect`: prints RESTART_ME mid-call; the runner restarts the server; the client must
// reconnect by itself, re-send `start_call`, and the call must go on without a new greeting.
//
// Every wait is bounded and the whole script has an overall timeout; any failed check exits 1.
import { audioLog, FakeMic, installBrowserGlobals, wire, wireFind } from "./voice_webaudio.mjs";

installBrowserGlobals();
const { VoiceClient } = await import("agents/voice/client");

const [HOST, NAME, MODE = "call"] = process.argv.slice(2);
const OVERALL_MS = Number(process.env.SCRIPT_TIMEOUT_MS ?? 60000);
const STEP_MS = 10000;
const GREETING = "Hello, this is the test line.";
const SPOKE = /^I spoke for \d+\.\d seconds\.$/;

// -- reporting ----------------------------------------------------------------------------------
let finished = false;
function dumpWire() {
  const tail = wire.frames.slice(-80).map((f) => {
    if (f.type === "<audio>") return `${f.dir} <audio ${f.bytes}B>`;
    return `${f.dir} ${f.msg === undefined ? f.type : JSON.stringify(f.msg)}${f.code ? ` ${f.code}` : ""}`;
  });
  console.error(`--- last ${tail.length} wire frames (of ${wire.frames.length}, audio-out omitted)`);
  for (const line of tail.filter((l) => !l.startsWith("out <audio"))) console.error(line);
}
function fail(message) {
  if (finished) return;
  finished = true;
  console.error(`FAIL: ${message}`);
  dumpWire();
  process.exit(1);
}
function check(condition, message, detail) {
  if (!condition) fail(`${message}${detail === undefined ? "" : `: ${JSON.stringify(detail)}`}`);
  console.log(`ok - ${message}${detail === undefined ? "" : ` (${JSON.stringify(detail)})`}`);
}
function equal(actual, expected, message) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) fail(`${message}: expected ${e}, got ${a}`);
  console.log(`ok - ${message}`);
}
if (!HOST || !NAME) fail("usage: node voice_client.mjs <host:port> <agent-name> [call|reconnect]");
const overall = setTimeout(() => fail(`script timed out after ${OVERALL_MS} ms`), OVERALL_MS);
process.on("unhandledRejection", (err) => fail(`unhandled rejection: ${err?.stack ?? err}`));
process.on("uncaughtException", (err) => fail(`uncaught exception: ${err?.stack ?? err}`));

/** Poll `predicate` (every 10 ms) until it returns something truthy; bounded. */
function waitUntil(predicate, label, ms = STEP_MS) {
  return new Promise((resolve, reject) => {
    const deadline = performance.now() + ms;
    const poll = () => {
      let value;
      try {
        value = predicate();
      } catch (err) {
        reject(err);
        return;
      }
      if (value) resolve(value);
      else if (performance.now() > deadline) reject(new Error(`${label}: not within ${ms} ms`));
      else setTimeout(poll, 10);
    };
    poll();
  });
}

// -- the client and what its own events report --------------------------------------------------
const mic = new FakeMic();
const client = new VoiceClient({
  agent: "FakeVoice", // → /agents/fake-voice/<name>, kebab-cased by the client
  name: NAME,
  host: HOST,
  audioInput: mic,
  preferredFormat: "pcm16",
});

const events = { status: [], connection: [], errors: [], voiceErrors: [], custom: [], turnMetrics: [] };
let transcript = [];
client.addEventListener("statuschange", (s) => events.status.push(s));
client.addEventListener("connectionchange", (c) => events.connection.push(c));
client.addEventListener("transcriptchange", (t) => (transcript = t));
client.addEventListener("error", (e) => e !== null && events.errors.push(e));
client.addEventListener("voiceerror", (e) => events.voiceErrors.push(e));
client.addEventListener("custommessage", (m) => events.custom.push(m));
client.addEventListener("turnmetrics", (m) => events.turnMetrics.push(m));

const ctx = () => audioLog.contexts.at(-1);
const liveSources = () => audioLog.sources.filter((s) => s.state === "scheduled");

/** True when `wanted` appears in order (not necessarily adjacent) in `seq`. */
function subsequence(seq, wanted) {
  let i = 0;
  for (const s of seq) if (s === wanted[i]) i++;
  return i === wanted.length;
}
const assistantTexts = () => transcript.filter((m) => m.role === "assistant").map((m) => m.text);
const userTexts = () => transcript.filter((m) => m.role === "user").map((m) => m.text);

function noErrors(label) {
  equal(events.voiceErrors, [], `${label}: no voice errors`);
  equal(events.errors, [], `${label}: no client errors`);
}

// Playback is over when no source is scheduled and no audio frame arrived for 150 ms (a frame
// still being turned into a buffer by the client is not a source yet).
async function waitPlaybackIdle(label) {
  await waitUntil(() => liveSources().length === 0 && performance.now() - wire.lastAudioInAt > 150,
    `${label}: playback done`, 20000);
}

// -- steps --------------------------------------------------------------------------------------
async function connectAndStart() {
  client.connect();
  await waitUntil(() => client.connected, "connected");
  check(true, "connectionchange(true)");
  await waitUntil(() => client.serverProtocolVersion !== null, "welcome");
  equal(client.serverProtocolVersion, 1, "server protocol version (welcome)");
  await waitUntil(() => events.status.includes("idle"), "status idle on connect");
  equal(client.status, "idle", "status is idle before the call");
  const hello = wireFind("out", "hello");
  check(hello.length === 1 && wire.frames[hello[0]].msg.protocol_version === 1, "client sent hello v1");

  await client.startCall();
  check(mic.running && mic.startCalls === 1, "startCall() started the custom audioInput");
  const start = wireFind("out", "start_call");
  equal(start.length, 1, "one start_call sent");
  equal(wire.frames[start[0]].msg.preferred_format, "pcm16", "start_call carries preferred_format");
  check(ctx() && ctx().state === "running" && ctx().resumeCalls >= 1, "AudioContext created and resumed");
  check(audioLog.audioElements.length === 1 && audioLog.audioElements[0].playCalls >= 1,
    "playback element (global Audio) played");
  await waitUntil(() => client.audioFormat !== null, "audio_config");
  equal([client.audioFormat, client.sampleRate], ["pcm16", 16000], "audio_config: pcm16 at 16 kHz");
  await waitUntil(() => events.status.includes("listening"), "status listening");
}

async function greeting() {
  await waitUntil(() => assistantTexts().includes(GREETING), "greeting transcript");
  check(true, "greeting transcript", GREETING);
  await waitUntil(() => subsequence(events.status, ["idle", "listening", "speaking", "listening"]),
    "greeting status sequence");
  check(true, "status idle → listening → speaking → listening", events.status);
  await waitPlaybackIdle("greeting");
  const played = audioLog.sources.filter((s) => s.state === "ended");
  check(played.length > 0, "greeting audio went through the AudioContext", played.length);
  check(played.every((s) => s.buffer.sampleRate === 16000 && s.buffer.numberOfChannels === 1),
    "buffers are mono at the declared 16 kHz");
  const seconds = played.reduce((t, s) => t + s.duration, 0);
  // 6 words at 0.25 s per word: audio *length*, not a timing
  check(Math.abs(seconds - 1.5) < 0.01, "greeting audio is 6 words × 0.25 s", seconds);
  check(played.every((s) => s.rms > 0.15 && s.rms < 0.25), "played PCM is the TTS tone (rms ≈ 0.21)",
    played.map((s) => +s.rms.toFixed(3)));
  check(played.every((s, i) => i === 0
    || s.requestedWhen >= played[i - 1].requestedWhen + played[i - 1].duration - 1e-6),
    "chunks scheduled back to back, no overlap");
}

async function spokenTurn() {
  const statusMark = events.status.length;
  const wireMark = wire.frames.length;
  const sourceMark = audioLog.sources.length;
  const turnMark = events.turnMetrics.length;
  const users = userTexts().length;
  check(await mic.speak(1.0), "spoke 1 s of tone through the audioInput");
  await waitUntil(() => userTexts().length > users, "user transcript", 15000);
  const said = userTexts().at(-1);
  check(SPOKE.test(said), "user transcript from spoken audio", said);
  await waitUntil(() => assistantTexts().includes(`You said: ${said}`), "assistant transcript");
  check(true, "assistant transcript", `You said: ${said}`);
  await waitUntil(() => subsequence(events.status.slice(statusMark), ["thinking", "speaking", "listening"]),
    "turn status sequence");
  check(true, "status listening → thinking → speaking → listening", events.status.slice(statusMark));
  check(wireFind("out", "start_of_speech", wireMark).length >= 1, "client sent start_of_speech");
  await waitUntil(() => wireFind("out", "end_of_speech", wireMark).length >= 1, "end_of_speech");
  check(true, "client sent end_of_speech");
  await waitUntil(() => events.turnMetrics.length > turnMark, "turn_metrics");
  const tm = events.turnMetrics.at(-1);
  equal([tm.source, tm.outcome], ["speech", "completed"], "turnMetrics: speech turn completed");
  const m = client.metrics;
  check(m && ["llm_ms", "tts_ms", "first_audio_ms", "total_ms"].every((k) => typeof m[k] === "number"),
    "metrics getter has the four numbers", m);
  await waitPlaybackIdle("reply");
  const words = `You said: ${said}`.split(" ").length;
  const played = audioLog.sources.slice(sourceMark);
  const seconds = played.reduce((t, s) => t + s.duration, 0);
  check(played.length > 0 && played.every((s) => s.state === "ended"), "reply audio played", played.length);
  check(Math.abs(seconds - words * 0.25) < 0.01, `reply audio is ${words} words × 0.25 s`, seconds);
}

async function bargeIn() {
  const statusMark = events.status.length;
  const wireMark = wire.frames.length;
  const sourceMark = audioLog.sources.length;
  client.sendText("tell me a story");
  check(wireFind("out", "text_message", wireMark).length === 1, "sendText() sent text_message");
  await waitUntil(() => userTexts().at(-1) === "tell me a story", "text turn: user transcript");
  check(true, "text message echoed as the user transcript");
  const users = userTexts().length;
  await waitUntil(() => events.status.slice(statusMark).includes("speaking"), "story: speaking");
  // the server has sent the whole story (TTS is faster than real time): its reply is over,
  // the caller is still hearing it — the barge-in lands on the playing tail
  await waitUntil(() => subsequence(events.status.slice(statusMark), ["speaking", "listening"]),
    "story: reply sent");
  // let some of the story play: at least one of its chunks ended, several still queued
  await waitUntil(() => audioLog.sources.slice(sourceMark).some((s) => s.state === "ended"),
    "story: first chunk played");
  const queued = liveSources().length;
  check(queued > 1, "story still playing when the caller speaks over it", queued);
  const storySeconds = audioLog.sources.slice(sourceMark).reduce((t, s) => t + s.duration, 0);

  const spoken = mic.speak(0.6);
  // the client's own interrupt detector (RMS > 0.05 for 2 chunks while playing)
  await waitUntil(() => wireFind("out", "interrupt", wireMark).length >= 1, "client interrupt");
  check(true, "client sent interrupt on its own when the caller spoke over playback");
  check(liveSources().length === 0, "playback stopped: no source left scheduled");
  const story = audioLog.sources.slice(sourceMark);
  const stopped = story.filter((s) => s.state === "stopped");
  check(stopped.length > 0, "queued story chunks were stop()ped", stopped.length);
  const heard = story.reduce((t, s) => t + (s.state === "ended" ? s.duration : s.playedSeconds ?? 0), 0);
  check(heard < storySeconds, "only part of the story was heard",
    { heard: +heard.toFixed(2), full: +storySeconds.toFixed(2) });
  // The server acknowledges whichever came first: the client's `interrupt` (status listening,
  // history cut to what was heard) or its own VAD barge-in (`playback_interrupt`).
  const interruptAt = wireFind("out", "interrupt", wireMark)[0];
  await waitUntil(() => wireFind("in", "playback_interrupt", wireMark).length >= 1
    || wireFind("in", "status", interruptAt, (m) => m.status === "listening").length >= 1,
    "server acknowledged the interruption");
  check(true, "server acknowledged the interruption (status listening / playback_interrupt)");
  const full = assistantTexts().find((t) => t.startsWith("Once upon a time"));
  check(full !== undefined, "story transcript arrived", full?.slice(0, 40));
  await spoken;

  // the barge-in utterance becomes a normal turn
  await waitUntil(() => userTexts().length > users, "barge-in utterance transcript", 15000);
  const said = userTexts().at(-1);
  check(SPOKE.test(said), "barge-in utterance transcribed", said);
  await waitUntil(() => assistantTexts().includes(`You said: ${said}`), "reply to the barge-in");
  await waitUntil(() => events.status.at(-1) === "listening", "listening after the barge-in turn");
  await waitPlaybackIdle("barge-in reply");
}

async function endCall() {
  const wireMark = wire.frames.length;
  const audioCtx = ctx();
  client.endCall();
  equal(client.status, "idle", "endCall() → status idle");
  check(!mic.running && mic.stopCalls >= 1, "endCall() stopped the audioInput");
  check(audioCtx.state === "closed", "endCall() closed the AudioContext");
  check(wireFind("out", "end_call", wireMark).length === 1, "client sent end_call");
  await waitUntil(() => wireFind("in", "status", wireMark, (m) => m.status === "idle").length >= 1,
    "server status idle after end_call");
  check(true, "server acknowledged end_call with status idle");
  equal(client.status, "idle", "still idle");
}

async function agentHangsUp() {
  // a second call on the same connection; "bye" makes the agent end it
  const wireMark = wire.frames.length;
  const stops = mic.stopCalls;
  await client.startCall();
  const callCtx = ctx();
  const sourceMark = audioLog.sources.length;
  check(mic.running, "second call started");
  await waitUntil(() => wireFind("in", "status", wireMark, (m) => m.status === "listening").length,
    "second call listening");
  await waitUntil(() => client.status === "listening", "client listening");
  client.sendText("ok bye");
  await waitUntil(() => assistantTexts().at(-1) === "Goodbye!", "goodbye transcript");
  await waitUntil(() => client.status === "idle" && !mic.running, "agent ended the call", 15000);
  check(mic.stopCalls > stops, "server status idle ended the client's call (audioInput stopped)");
  check(callCtx.state === "closed", "the call's AudioContext closed after the agent hung up");
  // Not checks, observations: the client receives audio as Blobs and decodes them
  // asynchronously, so "Goodbye!" frames sent *before* `status: idle` may be handled after
  // it — and then played in a fresh AudioContext the client opens after the call ended.
  await waitPlaybackIdle("goodbye");
  const bye = audioLog.sources.slice(sourceMark);
  const heard = bye.reduce((t, s) => t + (s.state === "ended" ? s.duration : s.playedSeconds ?? 0), 0);
  const late = bye.filter((s) => s.context !== callCtx).length;
  console.log(`note - goodbye audio: ${bye.length} chunk(s), ${heard.toFixed(2)} of `
    + `${bye.reduce((t, s) => t + s.duration, 0).toFixed(2)} s played; `
    + `${late} chunk(s) played in a new AudioContext opened after the call ended`);
  const greetings = assistantTexts().filter((t) => t === GREETING).length;
  equal(greetings, 1, "no second greeting on the same connection");
}

async function reconnect() {
  const opens = () => wireFind("event", "<open>").length;
  check(opens() === 1, "one socket so far");
  console.log("RESTART_ME");
  await waitUntil(() => !client.connected, "connection lost", 25000);
  const closes = wireFind("event", "<close>");
  const code = wire.frames[closes.at(-1)].code;
  check(code !== 1008 && !(code >= 4000 && code <= 4999), "close code is not terminal", code);
  check(mic.running, "the call is still on locally while disconnected");
  const mark = wire.frames.length;
  await waitUntil(() => client.connected, "reconnected (PartySocket backoff)", 30000);
  const hello = wireFind("out", "hello", mark);
  const start = wireFind("out", "start_call", mark);
  check(hello.length === 1 && start.length === 1 && hello[0] < start[0],
    "client re-sent hello then start_call on its own");
  await waitUntil(() => wireFind("in", "audio_config", mark).length, "audio_config again");
  await waitUntil(() => wireFind("in", "status", mark, (m) => m.status === "listening").length,
    "listening again");
  await waitUntil(() => client.status === "listening", "client listening after reconnect");
  check(mic.running, "call survived the restart (audioInput still running)");
  // while the server was down the client may have reported "Connection lost. Reconnecting..."
  equal(client.error, null, "client error cleared after the reconnect");
  events.errors.length = 0;
  await spokenTurn();
  // PartySocket keeps `_pk` across reconnects: the server must not greet this caller again
  const frames = wire.frames.slice(mark);
  check(!frames.some((f) => f.type === "transcript_end" && f.msg.text === GREETING),
    "no second greeting after the reconnect");
  equal(assistantTexts().filter((t) => t === GREETING).length, 1, "one greeting in the transcript");
}

// -- main ---------------------------------------------------------------------------------------
try {
  await connectAndStart();
  await greeting();
  if (MODE === "reconnect") {
    await reconnect();
    noErrors("reconnect");
    await endCall();
  } else if (MODE === "call") {
    await spokenTurn();
    noErrors("spoken turn");
    await bargeIn();
    noErrors("barge-in");
    await endCall();
    await agentHangsUp();
    noErrors("end of call");
  } else {
    fail(`unknown mode ${MODE}`);
  }
  client.disconnect();
  check(!client.connected, "disconnect()");
  console.log(`note - non-voice frames the client passed to custommessage: ${
    JSON.stringify([...new Set(events.custom.map((m) => m?.type))])}`);
  equal(audioLog.contexts.filter((c) => c.state !== "closed").length, 0, "every AudioContext closed");
} catch (err) {
  fail(err?.stack ?? String(err));
}
clearTimeout(overall);
finished = true;
console.log("PASS");
process.exit(0);
