// What the UNMODIFIED `VoiceClient` (agents/voice/client) needs of a browser, for Node 20:
// a fake Web Audio `AudioContext` whose clock runs in real time and that records the PCM it
// is given, a global `Audio` element, a `WebSocket` (the `ws` package, wrapped to record the
// frames on the wire), and a `VoiceAudioInput` microphone that sends PCM16 16 kHz mono frames
// every 20 ms: a 220 Hz tone while "speaking", zeros otherwise.
//
// Nothing here changes the client: it only provides the globals a browser would.
import WS from "ws";

// -- Web Audio ---------------------------------------------------------------------------------

/** Everything the fake audio stack saw, for the checks. */
export const audioLog = {
  contexts: [],
  buffers: [], // every AudioBuffer created (the client fills it before start())
  sources: [], // every AudioBufferSourceNode started: { ctx, buffer, when, duration, rms, state }
  audioElements: [],
};

class FakeAudioBuffer {
  constructor(numberOfChannels, length, sampleRate) {
    if (!(length > 0) || !(sampleRate > 0)) {
      // a browser throws NotSupportedError for these
      throw new RangeError(`createBuffer(${numberOfChannels}, ${length}, ${sampleRate})`);
    }
    this.numberOfChannels = numberOfChannels;
    this.length = length;
    this.sampleRate = sampleRate;
    this.duration = length / sampleRate;
    this._channels = Array.from({ length: numberOfChannels }, () => new Float32Array(length));
  }
  getChannelData(i) {
    return this._channels[i];
  }
}

function rmsOf(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  return samples.length ? Math.sqrt(sum / samples.length) : 0;
}

class FakeBufferSource {
  constructor(ctx) {
    this.context = ctx;
    this.buffer = null;
    this.onended = null;
    this.state = "new"; // new → scheduled → ended | stopped
    this._timer = null;
    this.destination = null;
  }
  connect(destination) {
    this.destination = destination;
    return destination;
  }
  disconnect() {
    this.destination = null;
  }
  start(when = 0) {
    if (this.state !== "new") throw new Error("InvalidStateError: start() called twice");
    if (!this.buffer) throw new Error("start() without a buffer");
    const ctx = this.context;
    this.requestedWhen = when; // the client's schedule
    this.when = Math.max(when, ctx.currentTime); // a time in the past means "now"
    this.duration = this.buffer.duration;
    this.rms = rmsOf(this.buffer.getChannelData(0));
    this.state = "scheduled";
    audioLog.sources.push(this);
    ctx._live.add(this);
    const ms = (this.when - ctx.currentTime + this.duration) * 1000;
    this._timer = setTimeout(() => this._finish("ended"), Math.max(0, ms));
  }
  stop() {
    if (this.state === "new") throw new Error("InvalidStateError: stop() before start()");
    if (this.state !== "scheduled") return;
    clearTimeout(this._timer);
    // how much of it had been played when it was stopped
    this.playedSeconds = Math.max(0, Math.min(this.duration, this.context.currentTime - this.when));
    this._finish("stopped");
  }
  _finish(state) {
    if (this.state !== "scheduled") return;
    this.state = state;
    this.context._live.delete(this);
    // a browser fires `ended` after stop() too, asynchronously
    setTimeout(() => this.onended?.({ type: "ended", target: this }), 0);
  }
}

export class FakeAudioContext {
  constructor(options = {}) {
    this.sampleRate = options.sampleRate ?? 48000;
    // browsers create contexts suspended without a user gesture: the client must resume()
    this.state = "suspended";
    this._elapsed = 0; // seconds accumulated while running
    this._runningSince = null;
    this._live = new Set();
    this.destination = { kind: "destination", context: this };
    this.resumeCalls = 0;
    this.closeCalls = 0;
    audioLog.contexts.push(this);
  }
  get currentTime() {
    const running = this._runningSince === null ? 0 : (performance.now() - this._runningSince) / 1000;
    return this._elapsed + running;
  }
  async resume() {
    this.resumeCalls++;
    if (this.state === "closed") throw new Error("InvalidStateError: context is closed");
    if (this.state !== "running") {
      this.state = "running";
      this._runningSince = performance.now();
    }
  }
  async suspend() {
    if (this.state === "running") {
      this._elapsed = this.currentTime;
      this._runningSince = null;
      this.state = "suspended";
    }
  }
  async close() {
    this.closeCalls++;
    if (this.state === "closed") return;
    this._elapsed = this.currentTime;
    this._runningSince = null;
    this.state = "closed";
    for (const src of this._live) {
      clearTimeout(src._timer);
      src.state = "closed";
    }
    this._live.clear();
  }
  createBuffer(numberOfChannels, length, sampleRate) {
    const buffer = new FakeAudioBuffer(numberOfChannels, length, sampleRate);
    audioLog.buffers.push(buffer);
    return buffer;
  }
  createBufferSource() {
    if (this.state === "closed") throw new Error("InvalidStateError: context is closed");
    return new FakeBufferSource(this);
  }
  createMediaStreamDestination() {
    return { kind: "media-stream-destination", context: this, stream: { id: `stream-${Math.random()}` } };
  }
  createGain() {
    return { gain: { value: 1, setValueAtTime() {} }, connect: (d) => d, disconnect() {} };
  }
  async decodeAudioData() {
    // the server is expected to declare pcm16; anything else is a failure of this test
    throw new Error("decodeAudioData called: the server did not declare pcm16");
  }
  /** Sources scheduled or playing now. */
  get liveSources() {
    return this._live.size;
  }
}

class FakeAudio {
  constructor() {
    this.autoplay = false;
    this.srcObject = null;
    this.paused = true;
    this.playCalls = 0;
    audioLog.audioElements.push(this);
  }
  async play() {
    this.playCalls++;
    this.paused = false;
  }
  pause() {
    this.paused = true;
  }
}

// -- WebSocket (the `ws` package, recording the wire) -------------------------------------------

/** Frames on the wire, in order: { dir: "out"|"in", type, msg?, bytes? }. */
export const wire = { frames: [], sockets: [], lastAudioInAt: 0 };

class SpyWebSocket extends WS {
  constructor(...args) {
    super(...args);
    wire.sockets.push(this);
    this.on("message", (data, isBinary) => {
      if (isBinary) {
        wire.frames.push({ dir: "in", type: "<audio>", bytes: data.size ?? data.length });
        wire.lastAudioInAt = performance.now();
      }
      else wire.frames.push({ dir: "in", ...parse(data.toString()) });
    });
    this.on("open", () => wire.frames.push({ dir: "event", type: "<open>" }));
    this.on("close", (code) => wire.frames.push({ dir: "event", type: "<close>", code }));
  }
  send(data, ...rest) {
    if (typeof data === "string") wire.frames.push({ dir: "out", ...parse(data) });
    else wire.frames.push({ dir: "out", type: "<audio>", bytes: data.byteLength });
    return super.send(data, ...rest);
  }
}

function parse(text) {
  try {
    const msg = JSON.parse(text);
    return { type: msg?.type ?? "<json>", msg };
  } catch {
    return { type: "<text>", msg: text };
  }
}

/** Indices of wire frames matching `dir` and `type` (from `start`). */
export function wireFind(dir, type, start = 0, pred = () => true) {
  const out = [];
  for (let i = start; i < wire.frames.length; i++) {
    const f = wire.frames[i];
    if (f.dir === dir && f.type === type && pred(f.msg ?? {})) out.push(i);
  }
  return out;
}

export function installBrowserGlobals() {
  globalThis.AudioContext = FakeAudioContext;
  globalThis.Audio = FakeAudio;
  globalThis.WebSocket = SpyWebSocket;
}

// -- microphone ---------------------------------------------------------------------------------

const MIC_RATE = 16000;
const FRAME_MS = 20;
const FRAME_SAMPLES = (MIC_RATE * FRAME_MS) / 1000; // 320
const TONE_HZ = 220;
const TONE_AMPLITUDE = 0.3;

/**
 * A `VoiceAudioInput`: frames of PCM16 LE 16 kHz mono every 20 ms, paced by the wall clock
 * (late timer ticks catch up, so the server hears real-time audio). `speak(seconds)` sends a
 * tone for that long and resolves when it has all been sent.
 */
export class FakeMic {
  constructor() {
    this.onAudioLevel = null;
    this.onAudioData = null;
    this.running = false;
    this.startCalls = 0;
    this.stopCalls = 0;
    this.framesSent = 0;
    this.toneFramesSent = 0;
    this._toneFramesLeft = 0;
    this._toneDone = [];
    this._phase = 0;
    this._timer = null;
  }

  async start() {
    this.startCalls++;
    if (this.running) return;
    if (typeof this.onAudioData !== "function" || typeof this.onAudioLevel !== "function") {
      throw new Error("VoiceClient did not set onAudioData/onAudioLevel before start()");
    }
    this.running = true;
    this._t0 = performance.now();
    this._due = 0;
    this._timer = setInterval(() => this._tick(), FRAME_MS);
  }

  stop() {
    this.stopCalls++;
    this.running = false;
    clearInterval(this._timer);
    this._timer = null;
    this._toneFramesLeft = 0;
    for (const done of this._toneDone.splice(0)) done(false);
  }

  /** Send `seconds` of tone (then silence again); resolves true once all of it was sent. */
  speak(seconds) {
    this._toneFramesLeft += Math.round((seconds * 1000) / FRAME_MS);
    return new Promise((resolve) => this._toneDone.push(resolve));
  }

  _tick() {
    const due = Math.floor((performance.now() - this._t0) / FRAME_MS);
    // catch up after a late tick, but never burst more than 10 frames
    const n = Math.min(10, due - this._due);
    for (let i = 0; i < n && this.running; i++) this._frame();
    this._due = due;
  }

  _frame() {
    const speaking = this._toneFramesLeft > 0;
    const pcm = new Int16Array(FRAME_SAMPLES);
    let sum = 0;
    if (speaking) {
      for (let i = 0; i < FRAME_SAMPLES; i++) {
        const s = TONE_AMPLITUDE * Math.sin(this._phase);
        this._phase += (2 * Math.PI * TONE_HZ) / MIC_RATE;
        pcm[i] = Math.round(s * 32767);
        sum += s * s;
      }
      this._phase %= 2 * Math.PI;
    }
    const rms = Math.sqrt(sum / FRAME_SAMPLES);
    this.onAudioLevel?.(rms);
    this.onAudioData?.(pcm.buffer);
    this.framesSent++;
    if (speaking) {
      this.toneFramesSent++;
      this._toneFramesLeft--;
      if (this._toneFramesLeft === 0) for (const done of this._toneDone.splice(0)) done(true);
    }
  }
}
