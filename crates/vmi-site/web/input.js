// The user's touches and keys, sent to the phone: pointer on the canvas (down, move, up
// in phone pixels), keys and pastes, and the Back, Home, Sleep and Wake buttons.

/** Key codes of docs/PROTOCOL.md, by the browser's `KeyboardEvent.key`. */
const KEY_CODES = {
  Backspace: 1,
  Enter: 2,
  Escape: 3,
  ArrowLeft: 4,
  ArrowRight: 5,
  ArrowUp: 6,
  ArrowDown: 7,
  Home: 8,
  Delete: 9,
  AudioVolumeUp: 10,
  AudioVolumeDown: 11,
  PageUp: 10,
  PageDown: 11,
};
const KEY_TEXT = 0;
const KEY_ENTER = 2;
const KEY_BACK = 3;
const KEY_HOME = 8;
const KEY_VOLUME_UP = 10;
const KEY_VOLUME_DOWN = 11;
/** Fingers sent at once (the phone draws with each); more are ignored until one lifts. */
const MAX_POINTERS = 5;
const PASTE_LIMIT = 2000;

/**
 * Binds the page's input. `session.sendInput(input)` sends; `power` is `{sleep, wake}`;
 * nothing is sent before the screen's size is known (`display.screen`).
 */
export function bindInput({ vmi, canvas, ui, display, session, power }) {
  const send = (input) => session.sendInput(input);
  const key = (code) => send({ kind: 'key', code, text: null });
  const keys = ui.keys;
  // On a desktop the text field holds the focus whenever the phone is used; on a touch device focusing it opens
  // the on-screen keyboard, so only the keyboard button does.
  const touch = () => document.body.classList.contains('phone-first') && matchMedia('(pointer: coarse)').matches;
  const focusKeys = () => keys && !touch() && keys.focus({ preventScroll: true });
  bindPointer({ vmi, canvas, display, send, power, focusKeys });
  bindKeys({ vmi, display, send, key, power, keys });
  if (keys) bindText({ vmi, display, send, key, keys });
  focusKeys();
  if (ui.keyboardBtn) {
    ui.keyboardBtn.addEventListener('pointerdown', (ev) => {
      // Focused in the same gesture (a phone opens its keyboard only then), and not taken away by the button.
      ev.preventDefault();
      if (document.activeElement === keys) keys.blur();
      else keys.focus({ preventScroll: true });
    });
  }
  ui.sleepOverlay.addEventListener('pointerdown', (ev) => {
    ev.preventDefault();
    power.wake();
  });
  const button = (el, fn) =>
    el.addEventListener('click', (ev) => {
      ev.preventDefault();
      el.blur(); // keys go to the phone, not to a focused button
      fn();
    });
  button(ui.sleepBtn, () => power.sleep(false));
  button(ui.wakeBtn, () => power.wake());
  button(ui.backBtn, () => !vmi.asleep && display.screen && key(KEY_BACK));
  button(ui.homeBtn, () => (vmi.asleep ? power.wake() : display.screen && key(KEY_HOME)));
  // The phone's hardware keys: volume, and power (the screen off and on, as a phone's side button).
  if (ui.volUpBtn) button(ui.volUpBtn, () => !vmi.asleep && display.screen && key(KEY_VOLUME_UP));
  if (ui.volDownBtn) button(ui.volDownBtn, () => !vmi.asleep && display.screen && key(KEY_VOLUME_DOWN));
  if (ui.powerBtn) button(ui.powerBtn, () => (vmi.asleep ? power.wake() : power.sleep(false)));
}

/** Touches: every finger on the canvas (or the mouse), in phone pixels. */
function bindPointer({ vmi, canvas, display, send, power, focusKeys }) {
  function phonePoint(ev) {
    const r = canvas.getBoundingClientRect();
    const w = vmi.width || canvas.width;
    const h = vmi.height || canvas.height;
    const x = Math.floor(((ev.clientX - r.left) / r.width) * w);
    const y = Math.floor(((ev.clientY - r.top) / r.height) * h);
    return { x: Math.min(w - 1, Math.max(0, x)), y: Math.min(h - 1, Math.max(0, y)) };
  }

  // Each finger on the glass, by the browser's pointer id: the phone's pointer number (0 for the first one down,
  // then the lowest free) and where it was last sent.
  const fingers = new Map();
  const freePointer = () => {
    for (let i = 0; i < MAX_POINTERS; i++) if (![...fingers.values()].some((f) => f.pointer === i)) return i;
    return -1;
  };
  canvas.addEventListener('pointerdown', (ev) => {
    if (ev.pointerType === 'mouse' && ev.button !== 0) return;
    ev.preventDefault();
    focusKeys();
    if (vmi.asleep) {
      if (ev.isPrimary) power.wake();
      return;
    }
    if (!display.screen || fingers.has(ev.pointerId)) return;
    const pointer = freePointer();
    if (pointer < 0) return;
    try {
      canvas.setPointerCapture(ev.pointerId);
    } catch {
      // not capturable (synthetic events)
    }
    const last = phonePoint(ev);
    fingers.set(ev.pointerId, { pointer, last });
    send({ kind: 'touch', phase: 0, x: last.x, y: last.y, pointer });
  });
  canvas.addEventListener('pointermove', (ev) => {
    const f = fingers.get(ev.pointerId);
    if (!f) return;
    const p = phonePoint(ev);
    if (p.x === f.last.x && p.y === f.last.y) return;
    f.last = p;
    send({ kind: 'touch', phase: 1, x: p.x, y: p.y, pointer: f.pointer });
  });
  const up = (ev) => {
    const f = fingers.get(ev.pointerId);
    if (!f) return;
    fingers.delete(ev.pointerId);
    const p = ev.type === 'pointercancel' ? f.last : phonePoint(ev);
    send({ kind: 'touch', phase: 2, x: p.x, y: p.y, pointer: f.pointer });
  };
  canvas.addEventListener('pointerup', up);
  canvas.addEventListener('pointercancel', up);
  canvas.addEventListener('contextmenu', (ev) => ev.preventDefault());
}

/**
 * Keys and pastes, page-wide. Asleep, Enter and Space wake the phone. Text typed into the text field comes through
 * its input events (`bindText`): here only the keys that are not text, and text typed while something else of the
 * page has the focus (it is sent to the text field first).
 */
function bindKeys({ vmi, display, send, key, power, keys }) {
  const field = (el) => el && (el.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(el.tagName));
  window.addEventListener('keydown', (ev) => {
    // An input method owns the keys while it composes (keyCode 229: a phone keyboard or an IME).
    if (ev.isComposing || ev.keyCode === 229) return;
    const inKeys = keys && ev.target === keys;
    if (!inKeys && field(ev.target)) return; // another field of the page (none today) types for itself
    if (ev.ctrlKey || ev.metaKey || (ev.altKey && !ev.getModifierState('AltGraph'))) return;
    const code = KEY_CODES[ev.key];
    const chars = [...ev.key];
    const printable = code === undefined && (ev.key === 'Dead' || (chars.length === 1 && ev.key >= ' '));
    if (code === undefined && !printable) return;
    if (vmi.asleep) {
      ev.preventDefault();
      if (code === KEY_ENTER || ev.key === ' ') power.wake();
      return;
    }
    if (printable) {
      // Text: the field's input events say what was meant (an accent, AltGr, a composed character). Focused now,
      // it receives this very key.
      if (keys && !inKeys) keys.focus({ preventScroll: true });
      else if (!keys && display.screen && chars.length === 1) {
        ev.preventDefault();
        send({ kind: 'key', code: KEY_TEXT, text: ev.key });
      }
      return;
    }
    ev.preventDefault();
    if (display.screen) key(code);
  });
  window.addEventListener('paste', (ev) => {
    if (vmi.asleep || !display.screen) return;
    const text = ev.clipboardData && ev.clipboardData.getData('text/plain');
    if (!text) return;
    ev.preventDefault();
    for (const ch of text.slice(0, PASTE_LIMIT)) {
      if (ch === '\n') key(KEY_ENTER);
      else if (ch >= ' ') send({ kind: 'key', code: KEY_TEXT, text: ch });
    }
  });
}

/** What goes into the text field reaches the phone as the text meant, and the field stays empty. */
function bindText({ vmi, display, send, key, keys }) {
  const ready = () => !vmi.asleep && display.screen;
  const sendText = (text) => {
    for (const ch of text.slice(0, PASTE_LIMIT)) {
      if (ch === '\n') key(KEY_ENTER);
      else if (ch >= ' ') send({ kind: 'key', code: KEY_TEXT, text: ch });
    }
  };
  let composing = false;
  keys.addEventListener('compositionstart', () => {
    composing = true;
  });
  keys.addEventListener('compositionend', (ev) => {
    composing = false;
    if (ready() && ev.data) sendText(ev.data);
    keys.value = '';
  });
  keys.addEventListener('beforeinput', (ev) => {
    // While an input method composes, the field shows the draft; the text goes at compositionend.
    if (composing || ev.isComposing || ev.inputType === 'insertCompositionText' || ev.inputType === 'insertFromComposition') {
      return;
    }
    ev.preventDefault();
    if (!ready()) return;
    switch (ev.inputType) {
      case 'insertText':
      case 'insertReplacementText':
        sendText(ev.data ?? (ev.dataTransfer ? ev.dataTransfer.getData('text/plain') : ''));
        break;
      case 'insertLineBreak':
      case 'insertParagraph':
        key(KEY_ENTER);
        break;
      case 'deleteContentBackward':
      case 'deleteWordBackward':
      case 'deleteSoftLineBackward':
        key(KEY_CODES.Backspace);
        break;
      case 'deleteContentForward':
      case 'deleteWordForward':
        key(KEY_CODES.Delete);
        break;
      default:
        break;
    }
  });
  keys.addEventListener('input', () => {
    if (!composing) keys.value = '';
  });
}
