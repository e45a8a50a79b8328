// Pings of one session: a latency probe every 2 s while awake and visible; asleep or
// hidden, only a keepalive after ~3 minutes without sending (PROTOCOL.md rule 10).

const PING_EVERY_MS = 2000;
const KEEPALIVE_MS = 170 * 1000;
const PINGS_IN_FLIGHT = 16;
/** The round trip the page shows is the least of the last few (one slow answer is the network's noise, not its distance). */
const SAMPLES_KEPT = 3;

export class Pings {
  /** `send(message)` sends on the session; `welcomed()` says whether it is welcomed. */
  constructor(vmi, send, welcomed) {
    this.vmi = vmi;
    this.send = send;
    this.welcomed = welcomed;
    this.timer = 0;
    this.lastSentAt = 0; // performance.now() of the last message sent, ping or not
    this.nonce = 0;
    this.inFlight = new Map(); // nonce -> performance.now() when sent
    this.samples = []; // the last round trips, ms
  }

  /** Notes that the session sent a message now. */
  sent() {
    this.lastSentAt = performance.now();
  }

  /** Stops pinging (the socket is gone); pings in flight are forgotten. */
  stop() {
    clearTimeout(this.timer);
    this.timer = 0;
    this.inFlight.clear();
    // the next connection may be to another site: its round trips start afresh
    this.samples = [];
  }

  /** Pings after `delay` ms (default: the usual period), or a keepalive when asleep or hidden. */
  schedule(delay) {
    clearTimeout(this.timer);
    if (!this.welcomed()) return;
    if (this.vmi.asleep || document.visibilityState !== 'visible') {
      // asleep costs nothing: only a keepalive after ~3 minutes without sending
      const wait = Math.max(1000, KEEPALIVE_MS - (performance.now() - this.lastSentAt));
      this.timer = setTimeout(() => {
        if (performance.now() - this.lastSentAt >= KEEPALIVE_MS - 1000) this.ping();
        this.schedule();
      }, wait);
      return;
    }
    this.timer = setTimeout(() => {
      this.ping();
      this.schedule(PING_EVERY_MS);
    }, delay ?? PING_EVERY_MS);
  }

  ping() {
    const nonce = ++this.nonce;
    if (this.inFlight.size > PINGS_IN_FLIGHT) this.inFlight.clear();
    this.inFlight.set(nonce, performance.now());
    this.send({ type: 'Ping', nonce });
  }

  /**
   * A Pong: `vmi.latencyMs` becomes the least of the last few round trips, the one figure the whole page shows for
   * the site that runs the phone (the connection indicator, the map, and what the page reports to the placer).
   */
  pong(nonce) {
    const sent = this.inFlight.get(nonce);
    if (sent !== undefined) {
      this.inFlight.delete(nonce);
      this.samples.push(performance.now() - sent);
      if (this.samples.length > SAMPLES_KEPT) this.samples.shift();
      this.vmi.latencyMs = Math.round(Math.min(...this.samples) * 10) / 10;
    }
  }

}
