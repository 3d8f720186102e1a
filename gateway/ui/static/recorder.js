// The microphone: MediaRecorder for the file sent, an AnalyserNode for the level meter.

const TICK_MS = 100;

export class Recorder {
  /** onTick(level 0..1, seconds) runs every TICK_MS while recording. */
  constructor(onTick) {
    this.onTick = onTick;
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    this.context = new AudioContext();
    this.analyser = this.context.createAnalyser();
    this.analyser.fftSize = 1024;
    this.context.createMediaStreamSource(this.stream).connect(this.analyser);
    const type = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/webm'].find((t) => MediaRecorder.isTypeSupported(t));
    this.recorder = new MediaRecorder(this.stream, type ? { mimeType: type } : {});
    this.chunks = [];
    this.recorder.ondataavailable = (event) => { if (event.data.size) this.chunks.push(event.data); };
    this.recorder.start();
    this.started = performance.now();
    const samples = new Float32Array(this.analyser.fftSize);
    this.ticker = setInterval(() => {
      this.analyser.getFloatTimeDomainData(samples);
      const rms = Math.sqrt(samples.reduce((sum, x) => sum + x * x, 0) / samples.length);
      this.onTick(Math.min(1, rms * 4), (performance.now() - this.started) / 1000);
    }, TICK_MS);
  }

  /** Stops recording; resolves to the recorded audio as a File. */
  stop() {
    clearInterval(this.ticker);
    return new Promise((resolve) => {
      this.recorder.onstop = () => {
        this.stream.getTracks().forEach((track) => track.stop());
        this.context.close();
        const type = this.recorder.mimeType || 'audio/webm';
        const extension = type.includes('ogg') ? 'ogg' : 'webm';
        resolve(new File(this.chunks, `recording.${extension}`, { type }));
      };
      this.recorder.stop();
    });
  }
}
