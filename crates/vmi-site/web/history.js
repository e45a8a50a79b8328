// "Restore my phone to…": the phone's checkpoints (from whichever site runs it) and a
// restore button per checkpoint that asks once more before it acts. The phone is
// replaced in place: this terminal stays connected and receives the restored screen.

import { bearer, getJson, postJson } from './api.js';

const HISTORY_POLL_MS = 30000;

/** How the page writes a time: the user's time zone, with seconds (two checkpoints a minute apart differ), 24-hour
 * like the phone's own clock. */
export const TIME_FORMAT = { dateStyle: 'medium', timeStyle: 'medium', hourCycle: 'h23' };

/** A checkpoint's time: {text: the date and time, ago: "12 min ago"}. */
export function when(ms, now = Date.now()) {
  const d = new Date(ms);
  const age = Math.max(0, now - ms);
  const mins = Math.round(age / 60000);
  const ago = mins < 1 ? 'just now' : mins < 60 ? `${mins} min ago`
    : mins < 48 * 60 ? `${Math.round(mins / 60)} h ago` : `${Math.round(mins / 1440)} days ago`;
  return { text: d.toLocaleString([], TIME_FORMAT), ago };
}

/** A label as the user reads it: a time the site wrote in UTC ("2026-11-25 13:05 UTC") in the user's zone. */
export function localLabel(label) {
  return (label || '').replace(/(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d) UTC/g, (_, y, mo, d, h, mi) =>
    new Date(Date.UTC(+y, +mo - 1, +d, +h, +mi)).toLocaleString([], { dateStyle: 'medium', timeStyle: 'short', hourCycle: 'h23' }),
  );
}

/** "1 checkpoint", "2 checkpoints". */
export function countOf(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

/** Starts the view (when the page has it and a token). `vmi.history` shows what it shows. */
export function startHistory({ vmi, token }) {
  const $ = (id) => document.getElementById(id);
  const list = $('hist-list');
  if (!list || !token) return;
  const ui = { list, sub: $('hist-sub'), empty: $('hist-empty'), save: $('hist-save'), banner: $('hist-banner') };
  new CheckpointHistory(vmi, bearer(token), ui).poll();
}

class CheckpointHistory {
  constructor(vmi, auth, ui) {
    this.vmi = vmi;
    this.auth = auth;
    this.ui = ui;
    // what the view shows (also read by tests through window.vmi.history)
    this.history = { checkpoints: [], restored: null, saved: null, error: null, loads: 0 };
    vmi.history = this.history;
    this.armed = null; // the id whose button asks "Sure?"
    this.busy = false;
    ui.save.addEventListener('click', () => this.save());
  }

  banner(text) {
    this.ui.banner.textContent = text;
    this.ui.banner.hidden = !text;
  }

  render() {
    const { history, ui } = this;
    ui.list.replaceChildren(...[...history.checkpoints].reverse().map((c) => this.row(c)));
    ui.empty.hidden = history.checkpoints.length > 0;
    ui.sub.textContent = history.checkpoints.length
      ? `${countOf(history.checkpoints.length, 'checkpoint', 'checkpoints')}, oldest ${when(history.checkpoints[0].at_ms).ago}`
      : 'Checkpoints of your phone';
    ui.save.disabled = this.busy;
    // What was just saved or restored, in view (the newest is first; the card may be below the fold).
    const shown = history.saved || history.restored;
    const row = shown && ui.list.querySelector(`li[data-id="${CSS.escape(shown)}"]`);
    if (row && this.reveal) {
      row.scrollIntoView({ block: 'nearest' });
      this.reveal = false;
    }
  }

  /** One checkpoint's line: when, its label, and its restore button. */
  row(c) {
    const li = document.createElement('li');
    li.dataset.id = c.id;
    if (this.history.restored === c.id) li.classList.add('current');
    const w = when(c.at_ms);
    const info = document.createElement('div');
    info.className = 'hist-when';
    const t = document.createElement('span');
    t.textContent = w.text;
    const a = document.createElement('span');
    a.className = 'ago';
    a.textContent = w.ago;
    const label = document.createElement('span');
    label.className = 'hist-label';
    label.textContent = localLabel(c.label);
    // The label on a line of its own under the time, never over it.
    info.append(t, label, a);
    const b = document.createElement('button');
    b.className = 'btn small' + (this.armed === c.id ? ' confirm' : '');
    b.textContent = this.armed === c.id ? 'Sure?' : 'Restore';
    b.title = 'Bring the phone back to this moment (what it has now is saved first)';
    b.disabled = this.busy;
    b.addEventListener('click', () => this.onRestore(c));
    li.append(info, b);
    return li;
  }

  async load() {
    const { history } = this;
    try {
      const v = await getJson('/v1/me/checkpoints', this.auth);
      history.checkpoints = Array.isArray(v.checkpoints) ? v.checkpoints : [];
      history.loads += 1;
      history.error = null;
    } catch (e) {
      history.error = String(e);
    }
    this.render();
  }

  async onRestore(c) {
    if (this.busy) return;
    if (this.armed !== c.id) {
      this.armed = c.id;
      // What the second press does, before it is pressed: the undo point.
      this.banner(
        `Restore your phone to ${when(c.at_ms).text}? What it has now is saved first as a checkpoint, ` +
          'so you can come back to it. Press Sure? to go ahead.',
      );
      this.render();
      return;
    }
    this.armed = null;
    await this.act('restore', async () => {
      const v = await postJson('/v1/me/checkpoints/restore', this.auth, { id: c.id });
      this.history.restored = v.restored.id;
      return `Your phone is back to ${when(v.restored.at_ms).text}. What it had before is kept as a checkpoint.`;
    });
  }

  async save() {
    if (this.busy) return;
    await this.act('save', async () => {
      const v = await postJson('/v1/me/checkpoints', this.auth, { label: 'saved from the browser' });
      this.history.saved = v.checkpoint.id;
      return v.replica ? `Saved, with a copy on ${v.replica}.` : 'Saved (no second site for a copy yet).';
    });
  }

  /** Runs `work` (which returns the banner's text) with the buttons disabled, then reloads. */
  async act(what, work) {
    this.busy = true;
    this.reveal = true;
    this.render();
    try {
      this.banner(await work());
    } catch (e) {
      this.history.error = String(e.message || e);
      this.banner(`Could not ${what}: ${this.history.error}`);
    }
    this.busy = false;
    await this.load();
  }

  async poll() {
    if (!this.vmi.asleep) await this.load();
    setTimeout(() => this.poll(), HISTORY_POLL_MS);
  }
}
