// The browser side of moshi-webrtc: the microphone to Moshi, Moshi's voice to the speakers
// and its words from the data channel "text" onto the page.
//
// ?test=SECONDS starts at once (no click) and, SECONDS after Moshi's voice first arrives,
// sends a {"type":"report"} message with what was received: the CI test reads it from the
// server's log.
'use strict';

const params = new URLSearchParams(location.search);
const testSeconds = Number(params.get('test') || 0);
const statusEl = document.getElementById('status');
const textEl = document.getElementById('text');
const levelEl = document.getElementById('level');
const remoteEl = document.getElementById('remote');
const startButton = document.getElementById('start');
const stopButton = document.getElementById('stop');

let session = null;

function setStatus(s) {
  statusEl.textContent = s;
}

// What the page itself hears of the remote track: WebAudio samples, counted as they are
// played, with their energy. RTP statistics alone would count packets that never decode.
class Listener {
  constructor(stream) {
    this.ctx = new AudioContext();
    this.source = this.ctx.createMediaStreamSource(stream);
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 2048;
    this.source.connect(this.analyser);
    this.buf = new Float32Array(this.analyser.fftSize);
    this.sumSquares = 0;
    this.samples = 0;
    this.loudSeconds = 0;       // time with RMS above -50 dBFS
    this.last = this.ctx.currentTime;
    this.timer = setInterval(() => this.poll(), 20);
  }

  poll() {
    const now = this.ctx.currentTime;
    const dt = now - this.last;
    this.last = now;
    this.analyser.getFloatTimeDomainData(this.buf);
    let sum = 0;
    for (const x of this.buf) sum += x * x;
    const rms = Math.sqrt(sum / this.buf.length);
    levelEl.value = rms;
    // Each poll stands for the time since the last one; the window overlaps, which only
    // smooths the estimate.
    const n = Math.round(dt * this.ctx.sampleRate);
    this.samples += n;
    this.sumSquares += rms * rms * n;
    if (rms > 0.00316) this.loudSeconds += dt;
  }

  stats() {
    return {
      seconds: this.samples / this.ctx.sampleRate,
      loud_seconds: this.loudSeconds,
      rms: this.samples > 0 ? Math.sqrt(this.sumSquares / this.samples) : 0,
      sample_rate: this.ctx.sampleRate,
    };
  }

  close() {
    clearInterval(this.timer);
    this.ctx.close();
  }
}

async function receivedRtp(pc) {
  const out = {};
  const stats = await pc.getStats();
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.packets = s.packetsReceived;
      out.samples = s.totalSamplesReceived;
      out.concealed = s.concealedSamples;
      out.duration = s.totalSamplesDuration;
      out.energy = s.totalAudioEnergy;
    }
  });
  return out;
}

async function start() {
  startButton.disabled = true;
  stopButton.disabled = false;
  textEl.textContent = '';
  setStatus('asking for the microphone');
  const mic = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, channelCount: 1 },
  });
  const wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  const ws = new WebSocket(wsUrl);
  // Host candidates only: the server is reached directly (localhost, a LAN); set
  // iceServers here for anything behind NAT.
  const pc = new RTCPeerConnection({ iceServers: [] });
  const s = { ws, pc, mic, listener: null, texts: 0, chars: 0, reportTimer: 0 };
  session = s;

  mic.getTracks().forEach((t) => pc.addTrack(t, mic));
  const channel = pc.createDataChannel('text');
  channel.onmessage = (e) => {
    s.texts += 1;
    s.chars += e.data.length;
    textEl.textContent += e.data;
  };

  pc.ontrack = (e) => {
    const stream = e.streams[0] || new MediaStream([e.track]);
    // Chrome only feeds a remote WebRTC track to WebAudio while a media element plays it.
    remoteEl.srcObject = stream;
    remoteEl.play().catch(() => {});
    s.listener = new Listener(stream);
    if (testSeconds > 0)
      s.reportTimer = setTimeout(() => report(s), testSeconds * 1000);
  };
  pc.onicecandidate = (e) => {
    if (e.candidate && ws.readyState === WebSocket.OPEN)
      ws.send(JSON.stringify({ type: 'ice', candidate: e.candidate.candidate,
                               sdpMLineIndex: e.candidate.sdpMLineIndex }));
  };
  pc.onconnectionstatechange = () => setStatus('connection ' + pc.connectionState);

  ws.onopen = async () => {
    setStatus('negotiating');
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    ws.send(JSON.stringify({ type: 'offer', sdp: offer.sdp }));
  };
  ws.onmessage = async (e) => {
    const msg = JSON.parse(e.data);
    if (msg.type === 'answer') {
      await pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
    } else if (msg.type === 'ice') {
      await pc.addIceCandidate({ candidate: msg.candidate, sdpMLineIndex: msg.sdpMLineIndex });
    } else if (msg.type === 'error') {
      setStatus('server: ' + msg.message);
    }
  };
  ws.onclose = () => {
    if (session === s) stop();
  };
}

async function report(s) {
  const msg = Object.assign({ type: 'report', texts: s.texts, chars: s.chars,
                              connection: s.pc.connectionState },
                            s.listener.stats(), { rtp: await receivedRtp(s.pc) });
  if (s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify(msg));
  document.title = 'report ' + JSON.stringify(msg);
}

function stop() {
  const s = session;
  if (!s) return;
  session = null;
  clearTimeout(s.reportTimer);
  if (s.listener) s.listener.close();
  s.mic.getTracks().forEach((t) => t.stop());
  s.pc.close();
  s.ws.close();
  remoteEl.srcObject = null;
  startButton.disabled = false;
  stopButton.disabled = true;
  setStatus('idle');
}

startButton.onclick = () => start().catch((e) => { setStatus('error: ' + e); stop(); });
stopButton.onclick = stop;
if (testSeconds > 0) startButton.onclick();
