// One terminal session with the site (docs/PROTOCOL.md): Hello (with Resume when this
// page has a screen), inputs kept until acknowledged and resent after a reconnect,
// FrameAcks, Redirect to the site that runs the phone, reconnects with backoff, and the
// end of the session on a refusal.

import { PROTOCOL_VERSION, ProtocolError, decodeServer, encodeClient } from './codec.js';
import { KeptInputs } from './kept-inputs.js';
import { Pings } from './ping.js';
import { reachable } from './api.js';
import { rememberToken, saveSession } from './storage.js';

const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000, 15000];
/** After this many failed connections to a redirected site, go back to the serving one. */
const REDIRECT_FAILURES = 3;

const ERROR_TEXT = {
  Unauthorized: 'This device is not allowed here.',
  Version: 'The site does not speak this terminal’s protocol version.',
  BadMessage: 'The site could not understand the terminal.',
  NotHere: 'Your phone is not on this site.',
  PhoneDown: 'Your phone is down.',
  Internal: 'The site had an internal error.',
};

export class Session {
  /**
   * `vmi` holds the page's figures; `display` shows the screen, `status` the state and
   * errors, `notifications` the phone's notifications; `saved` is the session this tab
   * saved for `token`, or null.
   */
  constructor({ vmi, token, saved, display, status, notifications }) {
    this.vmi = vmi;
    this.token = token;
    this.savedOther = null; // the device this browser keeps, when this page came with another token's link
    this.display = display;
    this.status = status;
    this.notifications = notifications;
    this.defaultUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/terminal`;
    this.ws = null;
    this.welcomed = false;
    this.fatal = false; // refused for good: no reconnect, no input
    this.attempt = 0;
    this.reconnectTimer = 0;
    this.failuresSinceWelcome = 0;
    this.inputs = new KeptInputs(saved);
    this.pings = new Pings(vmi, (m) => this.send(m), () => this.welcomed);
  }

  // ---- sending ---------------------------------------------------------------------

  send(m) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(encodeClient(m));
    this.pings.sent();
    return true;
  }

  /** Sends one input (touch or key) now if welcomed, and keeps it until acknowledged. */
  sendInput(input) {
    if (this.fatal) return;
    const seq = this.inputs.add(input);
    this.vmi.inputSeq = seq;
    this.vmi.pendingInputs = this.inputs.length;
    if (this.welcomed) this.send({ type: 'Input', seq, input });
    this.persist();
  }

  /** The page went to sleep (`vmi.asleep` is set): the site stops sending frames. */
  sleep() {
    if (this.welcomed) {
      this.send({ type: 'Sleep' });
      this.status.setState('asleep');
    } else {
      this.status.queue();
    }
    this.pings.schedule();
  }

  /** The page woke (`vmi.asleep` is cleared): the site sends the screen again. */
  wake() {
    if (this.welcomed) {
      this.send({ type: 'Wake' });
      this.status.setState('connected');
    } else {
      this.status.queue();
    }
    this.pings.schedule(0);
  }

  /** Ends the session before it starts: `text` says why. */
  refuse(text) {
    this.fatal = true;
    this.vmi.state = 'closed';
    this.status.showError(text);
  }

  persist() {
    const { vmi, inputs } = this;
    saveSession({
      token: this.token,
      lastSeq: vmi.lastSeq,
      width: vmi.width,
      height: vmi.height,
      kept: inputs.list,
      nextSeq: inputs.nextSeq,
    });
  }

  // ---- the connection --------------------------------------------------------------

  /** Opens a connection to `url` (default: the site that served this page). */
  connect(url = this.defaultUrl) {
    clearTimeout(this.reconnectTimer);
    this.vmi.url = url;
    this.welcomed = false;
    let sock;
    try {
      sock = new WebSocket(url);
    } catch (e) {
      this.status.showError(`cannot open ${url}: ${e.message}`);
      this.scheduleReconnect();
      return;
    }
    sock.binaryType = 'arraybuffer';
    this.ws = sock;
    sock.onopen = () => this.ws === sock && this.hello();
    sock.onmessage = (ev) => this.ws === sock && this.received(ev.data);
    sock.onclose = (ev) => this.ws === sock && this.closed(ev);
  }

  hello() {
    const { vmi } = this;
    const screen = this.display.screen;
    // A handoff's Hello uses the hash taken while the move was prepared (hashing a whole screen takes a while).
    const kept = this.hashed && this.hashed.seq === vmi.lastSeq ? this.hashed.hash : null;
    this.hashed = null;
    const resume =
      vmi.lastSeq > 0 && screen ? { last_frame_seq: vmi.lastSeq, screen_hash: kept || screen.hash() } : null;
    // The display the phone's screen follows (phone first), or none (the phone keeps its screen, scaled here).
    const display = this.display.wanted();
    this.sentDisplay = display;
    this.send({ type: 'Hello', version: PROTOCOL_VERSION, token: this.token, resume, asleep: vmi.asleep, display });
  }

  /** The page's display changed (a rotation, a resized window): the phone lays its screen out again. */
  displayChanged() {
    const display = this.display.wanted();
    if (!display || !this.welcomed || this.siteVersion < 3) return;
    const was = this.sentDisplay;
    if (was && was.width === display.width && was.height === display.height && was.density === display.density) return;
    this.sentDisplay = display;
    this.vmi.displayChanges = (this.vmi.displayChanges || 0) + 1;
    this.send({ type: 'Display', display });
  }

  received(data) {
    if (typeof data === 'string') {
      this.protocolFailure(new ProtocolError('BadValue', 'text frame'));
      return;
    }
    this.vmi.bytes += data.byteLength;
    try {
      this.handle(decodeServer(data), data.byteLength);
    } catch (e) {
      if (e instanceof ProtocolError) this.protocolFailure(e);
      else throw e;
    }
    this.status.queue();
  }

  closed(ev) {
    const { vmi } = this;
    this.ws = null;
    this.pings.stop();
    if (!this.welcomed) this.failuresSinceWelcome++;
    this.welcomed = false;
    // The close code says why even if the Error before it was lost: 4001 Unauthorized,
    // 4002 Version and 4003 BadMessage are final (docs/PROTOCOL.md "Closing").
    if (ev.code >= 4001 && ev.code <= 4003) this.fatal = true;
    if (this.fatal) {
      if (this.savedOther) {
        // A link that does not work did not replace the device this browser keeps: say how to get back to it.
        const back = `${location.origin}${location.pathname}`;
        this.status.showError(`${vmi.error || 'This link was refused'}. This browser's own device still works: open ${back}`);
        vmi.savedDevice = back;
      }
      this.status.setState('closed');
      return;
    }
    if (!vmi.error && ev.code !== 1000 && ev.code !== 1005) {
      vmi.error = `connection closed (${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`;
    }
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (this.fatal) return;
    const { vmi } = this;
    this.status.setState('reconnecting');
    // after repeated failures at a redirected site, go back to the one that served us
    if (vmi.url !== this.defaultUrl && this.failuresSinceWelcome >= REDIRECT_FAILURES) vmi.url = this.defaultUrl;
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)] * (0.8 + Math.random() * 0.4);
    this.attempt++;
    // What the outage panel says: how many tries, and when the next one goes.
    vmi.attempts = this.attempt;
    vmi.nextRetryAt = Date.now() + delay;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(vmi.url || this.defaultUrl), delay);
  }

  /** "Retry now": the next try at once instead of at the end of the back-off. */
  retryNow() {
    if (this.fatal || this.ws) return;
    this.vmi.nextRetryAt = null;
    this.connect(this.vmi.url || this.defaultUrl);
  }

  dropSocket() {
    const s = this.ws;
    this.ws = null;
    this.pings.stop();
    this.welcomed = false;
    if (s) {
      s.onopen = s.onmessage = s.onclose = s.onerror = null;
      try {
        s.close(1000);
      } catch {
        // already closing
      }
    }
  }

  protocolFailure(e) {
    console.warn('vmi: protocol error, reconnecting', e);
    this.status.showError(`protocol error: ${e.message}`);
    if (e.kind === 'UnsupportedVersion') {
      this.fatal = true;
      this.status.showError(`this site speaks another protocol version (${e.message}); reload the page later`);
      this.dropSocket();
      this.status.setState('closed');
      return;
    }
    this.dropSocket();
    this.scheduleReconnect();
  }

  // ---- site messages ---------------------------------------------------------------

  handle(m, size) {
    // a site answers Hello with Welcome, Error, or Redirect (the phone is elsewhere)
    if (!this.welcomed && m.type !== 'Welcome' && m.type !== 'Error' && m.type !== 'Redirect') {
      throw new ProtocolError('BadValue', `${m.type} before Welcome`);
    }
    switch (m.type) {
      case 'Welcome':
        return this.onWelcome(m);
      case 'FrameUpdate':
        return this.onFrameUpdate(m, size);
      case 'InputAck':
        return this.onInputAck(m);
      case 'InputDurable':
        return this.onInputDurable(m);
      case 'Notification':
        return this.notifications.notify({ title: m.title, body: m.body, at_ms: m.at_ms });
      case 'Redirect':
        return this.onRedirect(m);
      case 'Prepare':
        return this.prepare(m);
      case 'Joined':
        throw new ProtocolError('BadValue', 'Joined on a session that joined nothing');
      case 'Screen':
        // The phone's screen changed size: blank at the new size until the full frame that follows.
        this.vmi.screens = (this.vmi.screens || 0) + 1;
        this.display.resize(m.width, m.height);
        return this.persist();
      case 'Clipboard':
        return this.onClipboard && this.onClipboard(m.text);
      case 'Pong':
        return this.pings.pong(m.nonce);
      case 'Error':
        return this.onError(m);
      default:
        return undefined;
    }
  }

  onWelcome(m) {
    const { vmi } = this;
    if (this.welcomed) throw new ProtocolError('BadValue', 'second Welcome');
    this.welcomed = true;
    vmi.movingTo = null;
    vmi.attempts = 0;
    vmi.nextRetryAt = null;
    // Accepted: from now on this is the device this browser opens.
    rememberToken(this.token);
    this.savedOther = null;
    this.attempt = 0;
    this.failuresSinceWelcome = 0;
    vmi.error = null;
    this.display.resize(m.width, m.height);
    this.siteVersion = m.version;
    // inputs: resend, in order, what the phone has not applied; a version-2 site says later
    // when the rest is durable (until then it is kept: a failover may need it again)
    this.durableAcks = m.version >= 2;
    const resend = this.inputs.welcomed(m.last_input_seq, this.durableAcks);
    vmi.inputAcked = Math.max(vmi.inputAcked, m.last_input_seq);
    for (const k of resend) this.send({ type: 'Input', seq: k.seq, input: k.input });
    vmi.pendingInputs = this.inputs.length;
    this.persist();
    this.status.setState(vmi.asleep ? 'asleep' : 'connected');
    this.pings.schedule(0);
  }

  onFrameUpdate(m, size) {
    const { vmi } = this;
    const now = performance.now();
    if (this.move) {
      // The first frame from the site the phone moved to: what the move cost, as this page saw it (tests read it).
      const { redirectAt, lastFrameAt } = this.move;
      this.move = null;
      this.moved = true; // the gap across the move is counted there, not as a frame interval
      vmi.moves = (vmi.moves || []).slice(-9);
      vmi.moves.push({ terminalGapMs: now - redirectAt, frameGapMs: lastFrameAt === null ? null : now - lastFrameAt });
    }
    if (vmi.lastFrameAt !== undefined && !this.moved) {
      vmi.frameIntervals = (vmi.frameIntervals || []).slice(-19);
      vmi.frameIntervals.push(now - vmi.lastFrameAt);
    }
    this.moved = false;
    vmi.lastFrameAt = now;
    this.display.apply(m.tiles);
    vmi.lastSeq = m.seq;
    if (this.prepared) this.hashed = { seq: m.seq, hash: this.display.screen.hash() };
    vmi.frames++;
    for (const t of m.tiles) if (t.kind === 'copy') vmi.copies++;
    vmi.frameBytes += size;
    this.send({ type: 'FrameAck', seq: m.seq });
    this.persist();
  }

  onInputAck(m) {
    this.vmi.inputAcked = Math.max(this.vmi.inputAcked, m.seq);
    if (!this.durableAcks) this.inputs.acked(m.seq);
    this.vmi.pendingInputs = this.inputs.length;
    this.persist();
  }

  onInputDurable(m) {
    this.vmi.inputDurable = Math.max(this.vmi.inputDurable || 0, m.seq);
    this.inputs.acked(m.seq);
    this.vmi.pendingInputs = this.inputs.length;
    this.persist();
  }

  /**
   * The phone is moving (a live migration has begun): open the connection to its next site now and Join the move,
   * so the handoff needs no new connection (make before break). Once joined, the old site hears `Prepared`.
   */
  prepare(m) {
    if (!/^wss?:\/\//i.test(m.url)) throw new ProtocolError('BadValue', `prepare at ${m.url}`);
    this.dropPrepared();
    const url = reachable(m.url);
    let sock;
    try {
      sock = new WebSocket(url);
    } catch {
      return; // the Redirect reconnects as before
    }
    sock.binaryType = 'arraybuffer';
    const prepared = { url, sock, joined: false };
    this.prepared = prepared;
    // The handoff's Hello carries the screen's hash: take it now, and after each frame until then.
    if (this.display.screen) this.hashed = { seq: this.vmi.lastSeq, hash: this.display.screen.hash() };
    sock.onopen = () => {
      if (this.prepared !== prepared) return;
      sock.send(encodeClient({ type: 'Join', token: this.token, ticket: m.ticket }));
    };
    sock.onmessage = (ev) => {
      if (this.prepared !== prepared) return;
      let answer = null;
      try {
        answer = typeof ev.data === 'string' ? null : decodeServer(ev.data);
      } catch {
        // not joined: dropped below
      }
      if (answer && answer.type === 'Joined' && !prepared.joined) {
        prepared.joined = true;
        if (this.welcomed) this.send({ type: 'Prepared' });
      } else {
        this.dropPrepared();
      }
    };
    sock.onclose = () => {
      if (this.prepared === prepared) this.prepared = null;
    };
  }

  dropPrepared() {
    const p = this.prepared;
    this.prepared = null;
    if (p) {
      p.sock.onopen = p.sock.onmessage = p.sock.onclose = null;
      try {
        p.sock.close(1000);
      } catch {
        // already closing
      }
    }
  }

  onRedirect(m) {
    if (!/^wss?:\/\//i.test(m.url)) throw new ProtocolError('BadValue', `redirect to ${m.url}`);
    this.move = { redirectAt: performance.now(), lastFrameAt: this.vmi.lastFrameAt ?? null };
    const p = this.prepared;
    this.prepared = null;
    if (p && p.joined && p.url === reachable(m.url) && p.sock.readyState === WebSocket.OPEN) {
      // Make before break: the Hello goes on the connection opened while the phone's copy ran; the old one closes.
      this.dropSocket();
      this.vmi.url = p.url;
      this.vmi.preparedHandoffs = (this.vmi.preparedHandoffs || 0) + 1;
      this.welcomed = false;
      this.ws = p.sock;
      p.sock.onmessage = (ev) => this.ws === p.sock && this.received(ev.data);
      p.sock.onclose = (ev) => this.ws === p.sock && this.closed(ev);
      this.status.setState('moving');
      this.failuresSinceWelcome = 0;
      this.hello();
      return;
    }
    if (p) {
      this.prepared = p;
      this.dropPrepared();
    }
    this.dropSocket();
    // A planned move (a migration, or the phone found elsewhere): the screen stays as it is, with a small chip,
    // not the outage overlay; a failure to reach the new site is an outage again (`closed`).
    const to = reachable(m.url);
    let host = to;
    try {
      host = new URL(to.replace(/^ws/i, 'http')).host;
    } catch {
      // shown as given
    }
    this.vmi.movingTo = host;
    this.status.setState('moving');
    this.failuresSinceWelcome = 0;
    this.connect(to);
  }

  onError(m) {
    const what = ERROR_TEXT[m.codeName];
    this.status.showError(m.message ? `${what} The site says: ${m.message}` : what);
    // docs/PROTOCOL.md "Closing": the same Hello would be refused again
    if (m.codeName === 'Unauthorized' || m.codeName === 'Version' || m.codeName === 'BadMessage') {
      this.fatal = true;
      clearTimeout(this.reconnectTimer);
    }
    // the site closes the session now; onclose reconnects unless fatal
  }
}
