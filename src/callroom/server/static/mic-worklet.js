// AudioWorklet processor: microphone → PCM16 little-endian, 16 kHz mono, 20 ms frames.
//
// Runs on the audio thread at the AudioContext's rate (`sampleRate`, usually 48000 or
// 44100). Each output sample is the mean of the input samples that fall in its time slot:
// a box filter that is also a cheap anti-alias low-pass, good enough for speech recognition.
// Every full frame (320 samples = 20 ms) is posted to the page as a transferable ArrayBuffer
// together with its RMS level (0..1) for the level meter.

class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    const targetRate = opts.targetRate || 16000;
    this.step = sampleRate / targetRate; // input samples per output sample (≥ 1 expected)
    this.frameSamples = opts.frameSamples || 320;
    this.newFrame();
    this.sum = 0; // running sum of input samples in the current output slot
    this.count = 0;
    this.phase = 0; // input samples consumed in the current slot (fractional boundary)
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true; // no mic connected (yet)
    const channels = input.length;
    const n = input[0].length;
    for (let i = 0; i < n; i++) {
      let x = input[0][i];
      if (channels > 1) { // mix down to mono
        for (let c = 1; c < channels; c++) x += input[c][i];
        x /= channels;
      }
      this.sum += x;
      this.count++;
      this.phase += 1;
      if (this.phase >= this.step) {
        this.phase -= this.step;
        this.push(this.sum / this.count);
        this.sum = 0;
        this.count = 0;
      }
    }
    return true; // keep running while the page holds the node
  }

  push(sample) {
    const s = Math.max(-1, Math.min(1, sample));
    this.frame.setInt16(2 * this.filled++, s < 0 ? s * 0x8000 : s * 0x7fff, true); // LE
    this.energy += s * s;
    if (this.filled === this.frameSamples) {
      const rms = Math.sqrt(this.energy / this.frameSamples);
      const pcm = this.frame.buffer;
      this.port.postMessage({ pcm, rms }, [pcm]); // transfer, no copy
      this.newFrame();
    }
  }

  // A fresh frame buffer (the last one was transferred to the page); `energy` is the sum of
  // squares of the frame's samples.
  newFrame() {
    this.frame = new DataView(new ArrayBuffer(2 * this.frameSamples));
    this.filled = 0;
    this.energy = 0;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
