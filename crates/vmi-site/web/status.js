// The status bar and overlays: the session's state, round trip, bytes, frames, the
// sleep/wake buttons, "Reconnecting…" and the error line, all read from `vmi`.

import { formatBytes } from './format.js';

/** Frame and byte rates are over this long. */
const RATE_WINDOW_MS = 3000;

/** good | fair | poor | unknown, by the round trip (a screen that answers a touch within a frame or two is good). */
export function qualityLevel(rttMs) {
  if (rttMs === null || rttMs === undefined) return 'unknown';
  return rttMs <= 60 ? 'good' : rttMs <= 150 ? 'fair' : 'poor';
}

export class Status {
  /** `vmi` holds the page's figures; `ui` the elements that show them. */
  constructor(vmi, ui) {
    this.vmi = vmi;
    this.ui = ui;
    this.queued = false;
    this.samples = []; // {at, frames, bytes}, the last RATE_WINDOW_MS
    setInterval(() => this.sample(), 1000);
  }

  /** Notes the counters now; the rates are over the samples kept. */
  sample() {
    const { vmi } = this;
    const now = performance.now();
    this.samples.push({ at: now, frames: vmi.frames, bytes: vmi.bytes });
    while (this.samples.length > 2 && now - this.samples[0].at > RATE_WINDOW_MS) this.samples.shift();
    this.queue();
  }

  /** The one connection indicator: round trip, frames and bytes per second (a still screen: 0 and 0). */
  quality() {
    const { vmi, samples } = this;
    const first = samples[0];
    const last = samples[samples.length - 1];
    const secs = first && last && last.at > first.at ? (last.at - first.at) / 1000 : 0;
    const online = vmi.state === 'connected' || vmi.state === 'moving' || vmi.state === 'asleep';
    const rttMs = online ? vmi.latencyMs : null;
    const fps = secs ? Math.round(((last.frames - first.frames) / secs) * 10) / 10 : 0;
    const bytesPerSecond = secs ? Math.round((last.bytes - first.bytes) / secs) : 0;
    return { rttMs, fps, bytesPerSecond, level: qualityLevel(rttMs) };
  }

  /** Shows `vmi` now. */
  render() {
    const { vmi, ui } = this;
    this.queued = false;
    const q = this.quality();
    vmi.quality = q;
    const rttText = q.rttMs === null ? '–' : `${q.rttMs.toFixed(1)} ms`;
    if (ui.quality) {
      ui.quality.dataset.quality = q.level;
      ui.fps.textContent = `${q.fps} fps`;
      ui.rate.textContent = `${formatBytes(q.bytesPerSecond)}/s`;
    }
    if (ui.pfDot) ui.pfDot.title = `${vmi.state}: ${rttText} · ${q.fps} fps · ${formatBytes(q.bytesPerSecond)}/s`;
    ui.stateText.textContent = vmi.state;
    ui.stateDot.dataset.state = vmi.state;
    if (ui.pfDot) ui.pfDot.dataset.state = vmi.state;
    document.body.dataset.state = vmi.state;
    ui.rtt.textContent = rttText;
    ui.bytes.textContent = formatBytes(vmi.bytes);
    ui.frames.textContent = String(vmi.frames);
    ui.sleepBtn.hidden = vmi.asleep;
    ui.wakeBtn.hidden = !vmi.asleep;
    ui.sleepOverlay.hidden = !vmi.asleep;
    // A planned move shows a chip over the last frame, never the overlay.
    if (ui.moveChip) {
      ui.moveChip.hidden = vmi.state !== 'moving';
      ui.moveChip.textContent = vmi.state === 'moving' ? `Moving to ${vmi.movingTo || 'another site'}…` : '';
    }
    // Offline, the phone runs in this page; pairing, the form says what to do: nothing to connect to.
    const showConn = !vmi.asleep && !['connected', 'moving', 'offline', 'pairing'].includes(vmi.state);
    ui.connOverlay.hidden = !showConn;
    if (showConn) {
      ui.connText.textContent =
        vmi.state === 'closed' ? 'Disconnected' : vmi.state === 'reconnecting' ? 'Cannot reach your phone’s site' : 'Connecting…';
    }
    // A real outage says what is happening: the tries, the next one, a way to try now, and that the phone is safe.
    const outage = showConn && vmi.state === 'reconnecting';
    if (ui.connDetail) {
      ui.connDetail.hidden = !outage;
      ui.retryBtn.hidden = !outage;
      ui.connSafe.hidden = !outage;
      if (outage) {
        const left = vmi.nextRetryAt ? Math.max(0, Math.ceil((vmi.nextRetryAt - Date.now()) / 1000)) : 0;
        const tries = vmi.attempts === 1 ? '1 try' : `${vmi.attempts || 0} tries`;
        ui.connDetail.textContent = left > 0 ? `${tries} so far; the next in ${left} s` : `${tries} so far; trying now…`;
        ui.connSafe.textContent =
          'Your phone is safe: it keeps running on its site, or starts on another within seconds if that site is ' +
          'down. What you typed is kept here until the phone has it.';
        // the countdown moves on its own
        this.queueIn(500);
      }
    }
    // During an outage the panel says it in plain words; the raw close reason ("closed (1006)") would only repeat it.
    const explained = !vmi.asleep && vmi.state === 'reconnecting' && !!ui.connDetail;
    ui.error.hidden = !vmi.error || explained;
    ui.error.textContent = vmi.error || '';
  }

  /** Shows `vmi` again in `ms` (a countdown). */
  queueIn(ms) {
    clearTimeout(this.later);
    this.later = setTimeout(() => this.queue(), ms);
  }

  /** Shows `vmi` soon (once for many changes). */
  queue() {
    if (!this.queued) {
      this.queued = true;
      // rAF does not run in a hidden tab; a timer keeps the text right there too
      setTimeout(() => this.render(), 50);
    }
  }

  /**
   * The session's state: connecting | connected | asleep | moving | reconnecting | closed | offline | pairing. Shown
   * at once, not queued: the outage overlay covers the screen, and a touch in the moments after connecting must
   * reach the phone, not the overlay.
   */
  setState(s) {
    this.vmi.state = s;
    this.render();
  }

  /** The error line's text (null hides it). */
  showError(text) {
    this.vmi.error = text;
    this.queue();
  }
}
