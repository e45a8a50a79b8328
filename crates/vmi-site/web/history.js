// "Restore my phone to…": the phone's checkpoints (from whichever site runs it) and a
// restore button per checkpoint that asks once more before it acts. The phone is
// replaced in place: this terminal stays connected and receives the restored screen.

import { bearer, getJson, postJson } from './api.js';

const HISTORY_POLL_MS = 30000;

/** A checkpoint's time: {text: the date and time, ago: "12 min ago"}. */
function when(ms) {
  const d = new Date(ms);
  const age = Math.max(0, Date.now() - ms);
  const mins = Math.round(age / 60000);
  const ago = mins < 1 ? 'just now' : mins < 60 ? `${mins} min ago`
    : mins < 48 * 60 ? `${Math.round(mins / 60)} h ago` : `${Math.round(mins / 1440)} days ago`;
  return { text: d.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' }), ago };
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
      ? `${history.checkpoints.length} checkpoints, oldest ${when(history.checkpoints[0].at_ms).ago}`
      : 'Checkpoints of your phone';
    ui.save.disabled = this.busy;
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
    info.append(t, a);
    const label = document.createElement('span');
    label.className = 'hist-label';
    label.textContent = c.label || '';
    const b = document.createElement('button');
    b.className = 'btn small' + (this.armed === c.id ? ' confirm' : '');
    b.textContent = this.armed === c.id ? 'Sure?' : 'Restore';
    b.title = 'Bring the phone back to this moment (what it has now is saved first)';
    b.disabled = this.busy;
    b.addEventListener('click', () => this.onRestore(c));
    li.append(info, label, b);
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
