// Seed VMI browser terminal: shows the phone's pixels and sends touches and keys.
//
// One ES2020 module, no dependencies, no build step. The wire format is docs/PROTOCOL.md
// (version 1), byte for byte. The top part (codec, LZ4, screen, hash) is pure and is
// imported by tests/browser/unit.mjs under node; the bottom part (`start`) runs only
// in a browser page.

export const PROTOCOL_VERSION = 1;
/** Largest message either side may send (PROTOCOL.md "Limits"). */
export const MAX_MESSAGE = 16 * 1024 * 1024;
const MAX_STRING = 4096;
const MAX_TOKEN = 512;
const MAX_TILES = 65536;
const MAX_TILE_SIDE = 4096;
const TWO32 = 0x100000000;

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

/** A message that does not follow PROTOCOL.md. `kind` is the reference decoder's error name. */
export class ProtocolError extends Error {
  constructor(kind, detail) {
    super(detail ? `${kind}: ${detail}` : kind);
    this.name = 'ProtocolError';
    this.kind = kind;
  }
}

// ---------------------------------------------------------------------------------
// Decoding (site -> terminal)
// ---------------------------------------------------------------------------------

const utf8Decoder = new TextDecoder('utf-8', { fatal: true });
const utf8Encoder = new TextEncoder();

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.p = 0;
  }
  left() {
    return this.b.length - this.p;
  }
  need(n, what) {
    if (this.left() < n) {
      throw new ProtocolError('Truncated', `${what}: needed ${n}, available ${this.left()}`);
    }
  }
  u8(what) {
    this.need(1, what);
    return this.b[this.p++];
  }
  u16(what) {
    this.need(2, what);
    const x = this.v.getUint16(this.p, true);
    this.p += 2;
    return x;
  }
  u32(what) {
    this.need(4, what);
    const x = this.v.getUint32(this.p, true);
    this.p += 4;
    return x;
  }
  /** A u64 as a Number (exact below 2^53: sequence numbers, nonces, milliseconds). */
  u64(what) {
    this.need(8, what);
    const lo = this.v.getUint32(this.p, true);
    const hi = this.v.getUint32(this.p + 4, true);
    this.p += 8;
    return hi * TWO32 + lo;
  }
  bool(what) {
    const x = this.u8(what);
    if (x > 1) throw new ProtocolError('BadValue', `${what}: bool ${x}`);
    return x === 1;
  }
  bytes(n, what) {
    this.need(n, what);
    const s = this.b.subarray(this.p, this.p + n);
    this.p += n;
    return s;
  }
  string(what, limit = MAX_STRING) {
    const len = this.u16(`${what} length`);
    if (len > limit) throw new ProtocolError('TooLarge', `${what}: limit ${limit}, found ${len}`);
    const raw = this.bytes(len, what);
    try {
      return utf8Decoder.decode(raw);
    } catch {
      throw new ProtocolError('BadUtf8', what);
    }
  }
}

const ERROR_CODES = {
  1: 'Unauthorized',
  2: 'Version',
  3: 'BadMessage',
  4: 'NotHere',
  5: 'PhoneDown',
  6: 'Internal',
};

function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new ProtocolError('BadValue', 'message is not binary');
}

function readTile(r, i) {
  const x = r.u16('tile x');
  const y = r.u16('tile y');
  const w = r.u16('tile w');
  const h = r.u16('tile h');
  for (const [name, side] of [['w', w], ['h', h]]) {
    if (side === 0) throw new ProtocolError('BadValue', `tile ${i} ${name}: 0`);
    if (side > MAX_TILE_SIDE) {
      throw new ProtocolError('TooLarge', `tile ${i} ${name}: limit ${MAX_TILE_SIDE}, found ${side}`);
    }
  }
  const n = w * h * 4;
  const enc = r.u8('tile encoding');
  if (enc === 0) {
    const rgba = r.bytes(4, 'tile rgba');
    return { x, y, w, h, kind: 'solid', r: rgba[0], g: rgba[1], b: rgba[2], a: rgba[3] };
  }
  if (enc === 1) {
    const len = r.u32('lz4 length');
    const limit = n + Math.floor(n / 255) + 16;
    if (len > limit) throw new ProtocolError('TooLarge', `lz4 tile ${i}: limit ${limit}, found ${len}`);
    return { x, y, w, h, kind: 'lz4', data: r.bytes(len, 'lz4 data') };
  }
  if (enc === 2) {
    const len = r.u32('raw length');
    if (len !== n) throw new ProtocolError('BadValue', `raw tile ${i}: length ${len}, expected ${n}`);
    return { x, y, w, h, kind: 'raw', data: r.bytes(len, 'raw data') };
  }
  throw new ProtocolError('BadValue', `tile ${i} encoding ${enc}`);
}

/**
 * Decodes one site -> terminal message (one WebSocket binary frame).
 * Returns `{type, ...fields}`; field names are those of PROTOCOL.md.
 * Tile data are views into the message bytes (no copy). Throws ProtocolError.
 */
export function decodeServer(data) {
  const bytes = toBytes(data);
  if (bytes.length > MAX_MESSAGE) {
    throw new ProtocolError('TooLarge', `message: limit ${MAX_MESSAGE}, found ${bytes.length}`);
  }
  if (bytes.length === 0) throw new ProtocolError('Empty');
  const r = new Reader(bytes);
  const tag = r.u8('type');
  let m;
  switch (tag) {
    case 0x81: {
      const version = r.u16('version');
      if (version !== PROTOCOL_VERSION) {
        throw new ProtocolError('UnsupportedVersion', `found ${version}, supported ${PROTOCOL_VERSION}`);
      }
      m = {
        type: 'Welcome',
        version,
        width: r.u16('width'),
        height: r.u16('height'),
        last_input_seq: r.u64('last_input_seq'),
        resumed: r.bool('resumed'),
      };
      break;
    }
    case 0x82: {
      const seq = r.u64('seq');
      const count = r.u32('tile count');
      if (count > MAX_TILES) throw new ProtocolError('TooLarge', `tiles: limit ${MAX_TILES}, found ${count}`);
      if (count * 13 > r.left()) {
        throw new ProtocolError('Truncated', `tiles: needed ${count * 13}, available ${r.left()}`);
      }
      const tiles = new Array(count);
      for (let i = 0; i < count; i++) tiles[i] = readTile(r, i);
      m = { type: 'FrameUpdate', seq, tiles };
      break;
    }
    case 0x83:
      m = { type: 'InputAck', seq: r.u64('seq') };
      break;
    case 0x84:
      m = {
        type: 'Notification',
        title: r.string('title'),
        body: r.string('body'),
        at_ms: r.u64('at_ms'),
      };
      break;
    case 0x85:
      m = { type: 'Redirect', url: r.string('url') };
      break;
    case 0x86:
      m = { type: 'Pong', nonce: r.u64('nonce') };
      break;
    case 0x87: {
      const code = r.u8('error code');
      if (!ERROR_CODES[code]) throw new ProtocolError('BadValue', `error code ${code}`);
      m = { type: 'Error', code, codeName: ERROR_CODES[code], message: r.string('message') };
      break;
    }
    default:
      throw new ProtocolError('UnknownType', `0x${tag.toString(16).padStart(2, '0')}`);
  }
  if (r.left() !== 0) throw new ProtocolError('TrailingBytes', String(r.left()));
  return m;
}

// ---------------------------------------------------------------------------------
// Encoding (terminal -> site)
// ---------------------------------------------------------------------------------

class Writer {
  constructor() {
    this.b = new Uint8Array(64);
    this.v = new DataView(this.b.buffer);
    this.p = 0;
  }
  room(n) {
    if (this.p + n <= this.b.length) return;
    const nb = new Uint8Array(Math.max(this.b.length * 2, this.p + n));
    nb.set(this.b);
    this.b = nb;
    this.v = new DataView(nb.buffer);
  }
  u8(x) {
    this.room(1);
    this.b[this.p++] = x;
  }
  u16(x) {
    this.room(2);
    this.v.setUint16(this.p, x, true);
    this.p += 2;
  }
  u32(x) {
    this.room(4);
    this.v.setUint32(this.p, x >>> 0, true);
    this.p += 4;
  }
  u64(x) {
    if (!Number.isSafeInteger(x) || x < 0) throw new RangeError(`u64 out of range: ${x}`);
    this.u32(x % TWO32);
    this.u32(Math.floor(x / TWO32));
  }
  string(s, limit = MAX_STRING) {
    const raw = utf8Encoder.encode(s);
    if (raw.length > limit) throw new RangeError(`string longer than ${limit} bytes`);
    this.u16(raw.length);
    this.room(raw.length);
    this.b.set(raw, this.p);
    this.p += raw.length;
  }
  done() {
    return this.b.slice(0, this.p);
  }
}

/**
 * Encodes one terminal -> site message. `m` is one of
 *   {type:'Hello', version?, token, resume?: {last_frame_seq, screen_hash:[lo,hi]}, asleep}
 *   {type:'Input', seq, input: {kind:'touch', phase:0|1|2, x, y} | {kind:'key', code, text?}}
 *   {type:'FrameAck', seq}  {type:'Sleep'}  {type:'Wake'}  {type:'Ping', nonce}
 * Returns a Uint8Array.
 */
export function encodeClient(m) {
  const w = new Writer();
  switch (m.type) {
    case 'Hello':
      w.u8(0x01);
      w.u16(m.version ?? PROTOCOL_VERSION);
      w.string(m.token, MAX_TOKEN);
      if (m.resume) {
        w.u8(1);
        w.u64(m.resume.last_frame_seq);
        w.u32(m.resume.screen_hash[0]);
        w.u32(m.resume.screen_hash[1]);
      } else {
        w.u8(0);
      }
      w.u8(m.asleep ? 1 : 0);
      break;
    case 'Input': {
      w.u8(0x02);
      w.u64(m.seq);
      const inp = m.input;
      if (inp.kind === 'touch') {
        w.u8(0);
        w.u8(inp.phase);
        w.u16(inp.x);
        w.u16(inp.y);
      } else if (inp.kind === 'key') {
        w.u8(1);
        w.u8(inp.code);
        if (inp.text) {
          const cp = inp.text.codePointAt(0);
          if (cp >= 0xd800 && cp <= 0xdfff) throw new RangeError('text is not a Unicode scalar');
          w.u8(1);
          w.u32(cp);
        } else {
          w.u8(0);
        }
      } else {
        throw new RangeError(`unknown input kind ${inp.kind}`);
      }
      break;
    }
    case 'FrameAck':
      w.u8(0x03);
      w.u64(m.seq);
      break;
    case 'Sleep':
      w.u8(0x04);
      break;
    case 'Wake':
      w.u8(0x05);
      break;
    case 'Ping':
      w.u8(0x06);
      w.u64(m.nonce);
      break;
    default:
      throw new RangeError(`unknown message type ${m.type}`);
  }
  return w.done();
}

// ---------------------------------------------------------------------------------
// LZ4 block decompression (https://github.com/lz4/lz4/blob/dev/doc/lz4_Block_format.md)
// ---------------------------------------------------------------------------------

function lz4Error(detail) {
  return new ProtocolError('BadValue', `lz4: ${detail}`);
}

/**
 * Decompresses one LZ4 block `src` into `dst[start, start + len)`, which it must fill
 * exactly. Never reads or writes outside those ranges; throws ProtocolError on any
 * malformed or wrong-sized block.
 */
export function lz4DecodeBlock(src, dst, start = 0, len = dst.length - start) {
  const n = src.length;
  const end = start + len;
  let i = 0;
  let o = start;
  for (;;) {
    if (i >= n) throw lz4Error('block ends before its last literals');
    const token = src[i++];
    let lit = token >>> 4;
    if (lit === 15) {
      let b;
      do {
        if (i >= n) throw lz4Error('truncated literal length');
        b = src[i++];
        lit += b;
      } while (b === 255);
    }
    if (lit > n - i) throw lz4Error('literals run past the block');
    if (lit > end - o) throw lz4Error(`output larger than ${len} bytes`);
    if (lit < 32) {
      for (let k = 0; k < lit; k++) dst[o + k] = src[i + k];
    } else {
      dst.set(src.subarray(i, i + lit), o);
    }
    i += lit;
    o += lit;
    if (i === n) break; // the last sequence has literals only
    if (n - i < 2) throw lz4Error('truncated match offset');
    const off = src[i] | (src[i + 1] << 8);
    i += 2;
    if (off === 0 || off > o - start) throw lz4Error(`bad match offset ${off}`);
    let ml = token & 15;
    if (ml === 15) {
      let b;
      do {
        if (i >= n) throw lz4Error('truncated match length');
        b = src[i++];
        ml += b;
      } while (b === 255);
    }
    ml += 4;
    if (ml > end - o) throw lz4Error(`output larger than ${len} bytes`);
    let m = o - off;
    if (off >= ml && ml >= 32) {
      dst.copyWithin(o, m, m + ml);
      o += ml;
    } else {
      // overlapping (off < ml) copies repeat the last `off` bytes: byte by byte
      const stop = o + ml;
      while (o < stop) dst[o++] = dst[m++];
    }
  }
  if (o !== end) throw lz4Error(`decompressed to ${o - start} bytes, expected ${len}`);
}

// ---------------------------------------------------------------------------------
// Screen hash (PROTOCOL.md "Screen hash")
// ---------------------------------------------------------------------------------

/** The 64-bit screen hash of `bytes` as [lo, hi] (two unsigned 32-bit numbers). */
export function screenHashParts(bytes) {
  let lo = 0x811c9dc5;
  let hi = 0x9e3779b9;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    lo = Math.imul(lo ^ b, 0x01000193);
    hi = Math.imul(hi ^ b, 0x5bd1e995);
  }
  return [lo >>> 0, hi >>> 0];
}

/** [lo, hi] as 16 lowercase hex digits of the u64 (hi first): Rust's `format!("{:016x}")`. */
export function hashHex([lo, hi]) {
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}

// ---------------------------------------------------------------------------------
// The screen: an RGBA8 framebuffer that FrameUpdate tiles are applied to
// ---------------------------------------------------------------------------------

export class Screen {
  constructor(width, height) {
    this.width = width;
    this.height = height;
    this.rgba = new Uint8Array(width * height * 4); // starts all zero, like the site's
    this.scratch = new Uint8Array(0);
    this.color = new Uint8Array(4);
    this.colorWord = new Uint32Array(this.color.buffer);
  }

  /**
   * Applies one update's tiles in order. Every tile's rectangle is checked before any
   * is painted. Returns the rectangles painted, [{x, y, w, h}]. Throws ProtocolError.
   */
  apply(tiles) {
    const W = this.width;
    const H = this.height;
    for (let i = 0; i < tiles.length; i++) {
      const t = tiles[i];
      if (t.x + t.w > W || t.y + t.h > H) {
        throw new ProtocolError('BadValue', `tile ${i} (${t.x},${t.y} ${t.w}x${t.h}) off the ${W}x${H} screen`);
      }
    }
    const px = this.rgba;
    const rows = new Uint32Array(px.buffer, px.byteOffset, W * H);
    for (const t of tiles) {
      const rowBytes = t.w * 4;
      if (t.kind === 'solid') {
        this.color[0] = t.r;
        this.color[1] = t.g;
        this.color[2] = t.b;
        this.color[3] = t.a;
        const word = this.colorWord[0];
        for (let r = 0; r < t.h; r++) {
          const s = (t.y + r) * W + t.x;
          rows.fill(word, s, s + t.w);
        }
        continue;
      }
      let src;
      if (t.kind === 'raw') {
        src = t.data;
      } else {
        const n = rowBytes * t.h;
        if (t.x === 0 && t.w === W) {
          // full-width tile: its rows are contiguous in the screen; decode in place
          lz4DecodeBlock(t.data, px, t.y * W * 4, n);
          continue;
        }
        if (this.scratch.length < n) this.scratch = new Uint8Array(n);
        lz4DecodeBlock(t.data, this.scratch, 0, n);
        src = this.scratch;
      }
      for (let r = 0; r < t.h; r++) {
        px.set(src.subarray(r * rowBytes, (r + 1) * rowBytes), ((t.y + r) * W + t.x) * 4);
      }
    }
    return tiles.map((t) => ({ x: t.x, y: t.y, w: t.w, h: t.h }));
  }

  hash() {
    return screenHashParts(this.rgba);
  }
}

// ---------------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------------

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
};

const PING_EVERY_MS = 2000; // latency probe while awake and visible
const KEEPALIVE_MS = 170 * 1000; // while asleep: one ping after ~3 min of silence (PROTOCOL.md rule 10)
const MAX_KEPT_INPUTS = 4000;
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000, 15000];
const TOKEN_KEY = 'vmi.token';
const SESSION_KEY = 'vmi.session';

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

function takeToken() {
  const url = new URL(location.href);
  let token = url.searchParams.get('token');
  let changed = false;
  if (token !== null) {
    url.searchParams.delete('token');
    changed = true;
  }
  if (url.hash.length > 1) {
    const h = new URLSearchParams(url.hash.slice(1));
    if (h.has('token')) {
      token = token ?? h.get('token');
      h.delete('token');
      const rest = h.toString();
      url.hash = rest ? `#${rest}` : '';
      changed = true;
    }
  }
  if (changed) history.replaceState(history.state, '', url.pathname + url.search + url.hash);
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else token = localStorage.getItem(TOKEN_KEY);
  } catch {
    // storage unavailable (privacy mode): the token lives only in this page
  }
  return token || null;
}

function loadSession(token) {
  try {
    const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
    if (s && s.token === token) return s;
  } catch {
    // ignore a broken entry
  }
  return null;
}

/** Starts the terminal in this page. */
export function start() {
  const $ = (id) => document.getElementById(id);
  const canvas = $('screen');
  const ctx = canvas.getContext('2d');
  const ui = {
    stage: $('stage'),
    phone: $('phone'),
    stateDot: $('state-dot'),
    stateText: $('state-text'),
    rtt: $('m-rtt'),
    bytes: $('m-bytes'),
    frames: $('m-frames'),
    size: $('m-size'),
    sleepBtn: $('sleep-btn'),
    wakeBtn: $('wake-btn'),
    backBtn: $('back-btn'),
    homeBtn: $('home-btn'),
    sleepOverlay: $('sleep-overlay'),
    lockClock: $('lock-clock'),
    lockList: $('lock-notes'),
    connOverlay: $('conn-overlay'),
    connText: $('conn-text'),
    toasts: $('toasts'),
    error: $('error'),
  };

  const vmi = {
    state: 'connecting', // connecting | connected | asleep | reconnecting | closed
    frames: 0, // FrameUpdates applied
    bytes: 0, // all bytes received (message payloads)
    frameBytes: 0, // bytes of FrameUpdate messages received
    notifications: [], // {title, body, at_ms}
    lastSeq: 0, // seq of the last FrameUpdate applied
    latencyMs: null, // last Ping -> Pong round trip
    width: 0,
    height: 0,
    asleep: false,
    error: null, // last error text shown, or null
    url: null, // WebSocket URL of the current site
    inputSeq: 0, // seq of the last input sent
    inputAcked: 0, // highest input seq acknowledged
    pendingInputs: 0, // inputs kept until acknowledged
    screenHash: () => hashHex(screen ? screen.hash() : screenHashParts(new Uint8Array(0))),
    sleep: () => sleep(false),
    wake: () => wake(),
  };
  window.vmi = vmi;

  const token = takeToken();
  const saved = token ? loadSession(token) : null;
  const defaultUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/terminal`;

  let screen = null;
  let image = null; // ImageData shown on the canvas (alpha forced opaque)
  let ws = null;
  let welcomed = false;
  let fatal = false;
  let attempt = 0;
  let reconnectTimer = 0;
  let pingTimer = 0;
  let lastSentAt = 0;
  let nonce = 0;
  const pings = new Map();
  let kept = []; // [{seq, input}] not yet acknowledged
  let nextSeq = 1;
  let autoSlept = false;
  let failuresSinceWelcome = 0;

  if (saved) {
    vmi.lastSeq = saved.lastSeq || 0;
    kept = Array.isArray(saved.kept) ? saved.kept : [];
    nextSeq = saved.nextSeq || 1;
    if (saved.width && saved.height) setSize(saved.width, saved.height);
  }

  function persist() {
    try {
      sessionStorage.setItem(
        SESSION_KEY,
        JSON.stringify({ token, lastSeq: vmi.lastSeq, width: vmi.width, height: vmi.height, kept, nextSeq }),
      );
    } catch {
      // best effort
    }
  }

  // ---- display -------------------------------------------------------------------

  function setSize(w, h) {
    if (screen && screen.width === w && screen.height === h) return;
    screen = new Screen(w, h);
    image = new ImageData(w, h);
    image.data.fill(0);
    for (let i = 3; i < image.data.length; i += 4) image.data[i] = 255;
    vmi.width = w;
    vmi.height = h;
    canvas.width = w;
    canvas.height = h;
    ctx.putImageData(image, 0, 0);
    ui.size.textContent = `${w}×${h}`;
    fit();
  }

  function paint(rects) {
    const W = screen.width;
    const src = screen.rgba;
    const dst = image.data;
    for (const r of rects) {
      for (let row = 0; row < r.h; row++) {
        const s = ((r.y + row) * W + r.x) * 4;
        const e = s + r.w * 4;
        dst.set(src.subarray(s, e), s);
        for (let i = s + 3; i < e; i += 4) dst[i] = 255; // the screen is opaque
      }
      ctx.putImageData(image, 0, 0, r.x, r.y, r.w, r.h);
    }
  }

  function fit() {
    const w = vmi.width || 720;
    const h = vmi.height || 1280;
    const bezel = ui.phone.offsetWidth - canvas.offsetWidth;
    const bezelV = ui.phone.offsetHeight - canvas.offsetHeight;
    const availW = Math.max(80, ui.stage.clientWidth - 24 - bezel);
    const availH = Math.max(80, ui.stage.clientHeight - 24 - bezelV);
    let scale = Math.min(availW / w, availH / h);
    const dpr = window.devicePixelRatio || 1;
    // crisp: when enlarging, snap to a whole number of device pixels per phone pixel
    if (scale * dpr >= 1) {
      scale = Math.floor(scale * dpr + 1e-6) / dpr;
      canvas.style.imageRendering = 'pixelated';
    } else {
      canvas.style.imageRendering = 'auto';
    }
    canvas.style.width = `${Math.round(w * scale * 100) / 100}px`;
    canvas.style.height = `${Math.round(h * scale * 100) / 100}px`;
  }
  window.addEventListener('resize', fit);

  // ---- status --------------------------------------------------------------------

  let statusQueued = false;
  function renderStatus() {
    statusQueued = false;
    ui.stateText.textContent = vmi.state;
    ui.stateDot.dataset.state = vmi.state;
    document.body.dataset.state = vmi.state;
    ui.rtt.textContent = vmi.latencyMs === null ? '–' : `${vmi.latencyMs} ms`;
    ui.bytes.textContent = formatBytes(vmi.bytes);
    ui.frames.textContent = String(vmi.frames);
    ui.sleepBtn.hidden = vmi.asleep;
    ui.wakeBtn.hidden = !vmi.asleep;
    ui.sleepOverlay.hidden = !vmi.asleep;
    const showConn = !vmi.asleep && vmi.state !== 'connected';
    ui.connOverlay.hidden = !showConn;
    if (showConn) {
      ui.connText.textContent =
        vmi.state === 'closed' ? 'Disconnected' : vmi.state === 'reconnecting' ? 'Reconnecting…' : 'Connecting…';
    }
    ui.error.hidden = !vmi.error;
    ui.error.textContent = vmi.error || '';
  }
  function status() {
    if (!statusQueued) {
      statusQueued = true;
      // rAF does not run in a hidden tab; a timer keeps the text right there too
      setTimeout(renderStatus, 50);
    }
  }
  function setState(s) {
    vmi.state = s;
    status();
  }
  function showError(text) {
    vmi.error = text;
    status();
  }

  // ---- notifications -------------------------------------------------------------

  function noteElement(n, cls) {
    const el = document.createElement('div');
    el.className = cls;
    const t = document.createElement('div');
    t.className = 'note-title';
    t.textContent = n.title;
    const when = document.createElement('span');
    when.className = 'note-time';
    const d = new Date(n.at_ms || Date.now());
    when.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    t.appendChild(when);
    const b = document.createElement('div');
    b.className = 'note-body';
    b.textContent = n.body;
    el.append(t, b);
    return el;
  }

  let unseen = []; // notifications that came while asleep: toasted again on wake
  function notify(n) {
    vmi.notifications.push(n);
    ui.lockList.prepend(noteElement(n, 'lock-note'));
    while (ui.lockList.children.length > 20) ui.lockList.lastChild.remove();
    if (vmi.asleep) unseen.push(n);
    else toast(n);
  }

  function toast(n) {
    const el = noteElement(n, 'toast');
    ui.toasts.prepend(el);
    while (ui.toasts.children.length > 3) ui.toasts.lastChild.remove();
    setTimeout(() => {
      el.classList.add('leaving');
      setTimeout(() => el.remove(), 400);
    }, 5000);
  }

  function updateLockClock() {
    ui.lockClock.textContent = new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  // ---- connection ----------------------------------------------------------------

  function send(m) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(encodeClient(m));
    lastSentAt = performance.now();
    return true;
  }

  function connect(url) {
    clearTimeout(reconnectTimer);
    vmi.url = url;
    welcomed = false;
    let sock;
    try {
      sock = new WebSocket(url);
    } catch (e) {
      showError(`cannot open ${url}: ${e.message}`);
      scheduleReconnect();
      return;
    }
    sock.binaryType = 'arraybuffer';
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      const resume = vmi.lastSeq > 0 && screen ? { last_frame_seq: vmi.lastSeq, screen_hash: screen.hash() } : null;
      send({ type: 'Hello', version: PROTOCOL_VERSION, token, resume, asleep: vmi.asleep });
    };
    sock.onmessage = (ev) => {
      if (ws !== sock) return;
      if (typeof ev.data === 'string') {
        protocolFailure(new ProtocolError('BadValue', 'text frame'));
        return;
      }
      vmi.bytes += ev.data.byteLength;
      try {
        handle(decodeServer(ev.data), ev.data.byteLength);
      } catch (e) {
        if (e instanceof ProtocolError) protocolFailure(e);
        else throw e;
      }
      status();
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      stopPings();
      if (!welcomed) failuresSinceWelcome++;
      welcomed = false;
      if (fatal) {
        setState('closed');
        return;
      }
      if (!vmi.error && ev.code !== 1000 && ev.code !== 1005) {
        vmi.error = `connection closed (${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`;
      }
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    if (fatal) return;
    setState('reconnecting');
    // after repeated failures at a redirected site, go back to the one that served us
    if (vmi.url !== defaultUrl && failuresSinceWelcome >= 3) vmi.url = defaultUrl;
    const delay = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)] * (0.8 + Math.random() * 0.4);
    attempt++;
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(() => connect(vmi.url || defaultUrl), delay);
  }

  function dropSocket() {
    const s = ws;
    ws = null;
    stopPings();
    welcomed = false;
    if (s) {
      s.onopen = s.onmessage = s.onclose = s.onerror = null;
      try {
        s.close(1000);
      } catch {
        // already closing
      }
    }
  }

  function protocolFailure(e) {
    console.warn('vmi: protocol error, reconnecting', e);
    showError(`protocol error: ${e.message}`);
    if (e.kind === 'UnsupportedVersion') {
      fatal = true;
      showError(`this site speaks another protocol version (${e.message}); reload the page later`);
      dropSocket();
      setState('closed');
      return;
    }
    dropSocket();
    scheduleReconnect();
  }

  function handle(m, size) {
    // a site answers Hello with Welcome, Error, or Redirect (the phone is elsewhere)
    if (!welcomed && m.type !== 'Welcome' && m.type !== 'Error' && m.type !== 'Redirect') {
      throw new ProtocolError('BadValue', `${m.type} before Welcome`);
    }
    switch (m.type) {
      case 'Welcome': {
        if (welcomed) throw new ProtocolError('BadValue', 'second Welcome');
        welcomed = true;
        attempt = 0;
        failuresSinceWelcome = 0;
        vmi.error = null;
        if (!screen || screen.width !== m.width || screen.height !== m.height) setSize(m.width, m.height);
        // inputs: drop what the site already applied, resend the rest in order
        kept = kept.filter((k) => k.seq > m.last_input_seq);
        if (kept.length === 0) nextSeq = m.last_input_seq + 1;
        vmi.inputAcked = Math.max(vmi.inputAcked, m.last_input_seq);
        for (const k of kept) send({ type: 'Input', seq: k.seq, input: k.input });
        vmi.pendingInputs = kept.length;
        persist();
        setState(vmi.asleep ? 'asleep' : 'connected');
        schedulePing(0);
        break;
      }
      case 'FrameUpdate': {
        const rects = screen.apply(m.tiles);
        paint(rects);
        vmi.lastSeq = m.seq;
        vmi.frames++;
        vmi.frameBytes += size;
        send({ type: 'FrameAck', seq: m.seq });
        persist();
        break;
      }
      case 'InputAck': {
        vmi.inputAcked = Math.max(vmi.inputAcked, m.seq);
        kept = kept.filter((k) => k.seq > m.seq);
        vmi.pendingInputs = kept.length;
        persist();
        break;
      }
      case 'Notification':
        notify({ title: m.title, body: m.body, at_ms: m.at_ms });
        break;
      case 'Redirect': {
        if (!/^wss?:\/\//i.test(m.url)) throw new ProtocolError('BadValue', `redirect to ${m.url}`);
        dropSocket();
        setState('reconnecting');
        failuresSinceWelcome = 0;
        connect(m.url);
        break;
      }
      case 'Pong': {
        const sent = pings.get(m.nonce);
        if (sent !== undefined) {
          pings.delete(m.nonce);
          vmi.latencyMs = Math.round(performance.now() - sent);
        }
        break;
      }
      case 'Error': {
        const what = {
          Unauthorized: 'This device is not allowed here.',
          Version: 'The site does not speak this terminal’s protocol version.',
          BadMessage: 'The site could not understand the terminal.',
          NotHere: 'Your phone is not on this site.',
          PhoneDown: 'Your phone is down.',
          Internal: 'The site had an internal error.',
        }[m.codeName];
        showError(m.message ? `${what} The site says: ${m.message}` : what);
        if (m.codeName === 'Unauthorized' || m.codeName === 'Version') {
          fatal = true;
          clearTimeout(reconnectTimer);
        }
        // the site closes the session now; onclose reconnects unless fatal
        break;
      }
      default:
        break;
    }
  }

  // ---- latency probe / keepalive ------------------------------------------------

  function stopPings() {
    clearTimeout(pingTimer);
    pingTimer = 0;
    pings.clear();
  }

  function schedulePing(delay) {
    clearTimeout(pingTimer);
    if (!welcomed) return;
    if (vmi.asleep || document.visibilityState !== 'visible') {
      // asleep costs nothing: only a keepalive after ~3 minutes without sending
      const wait = Math.max(1000, KEEPALIVE_MS - (performance.now() - lastSentAt));
      pingTimer = setTimeout(() => {
        if (performance.now() - lastSentAt >= KEEPALIVE_MS - 1000) ping();
        schedulePing();
      }, wait);
      return;
    }
    pingTimer = setTimeout(() => {
      ping();
      schedulePing(PING_EVERY_MS);
    }, delay ?? PING_EVERY_MS);
  }

  function ping() {
    nonce++;
    if (pings.size > 16) pings.clear();
    pings.set(nonce, performance.now());
    send({ type: 'Ping', nonce });
  }

  // ---- sleep / wake --------------------------------------------------------------

  function sleep(auto) {
    if (vmi.asleep) return;
    vmi.asleep = true;
    autoSlept = !!auto;
    updateLockClock();
    if (welcomed) {
      send({ type: 'Sleep' });
      setState('asleep');
    } else {
      status();
    }
    schedulePing();
  }

  function wake() {
    if (!vmi.asleep) return;
    vmi.asleep = false;
    autoSlept = false;
    ui.lockList.replaceChildren();
    for (const n of unseen.slice(-3)) toast(n);
    unseen = [];
    if (welcomed) {
      send({ type: 'Wake' });
      setState('connected');
    } else {
      status();
    }
    schedulePing(0);
  }

  setInterval(() => {
    if (vmi.asleep) updateLockClock();
  }, 15000);

  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'hidden' && !vmi.asleep) sleep(true);
    else if (document.visibilityState === 'visible' && vmi.asleep && autoSlept) wake();
    else schedulePing();
  });

  // ---- input ---------------------------------------------------------------------

  function sendInput(input) {
    if (fatal) return;
    const seq = nextSeq++;
    kept.push({ seq, input });
    if (kept.length > MAX_KEPT_INPUTS) kept.splice(0, kept.length - MAX_KEPT_INPUTS);
    vmi.inputSeq = seq;
    vmi.pendingInputs = kept.length;
    if (welcomed) send({ type: 'Input', seq, input });
    persist();
  }

  function phonePoint(ev) {
    const r = canvas.getBoundingClientRect();
    const w = vmi.width || canvas.width;
    const h = vmi.height || canvas.height;
    const x = Math.floor(((ev.clientX - r.left) / r.width) * w);
    const y = Math.floor(((ev.clientY - r.top) / r.height) * h);
    return { x: Math.min(w - 1, Math.max(0, x)), y: Math.min(h - 1, Math.max(0, y)) };
  }

  let pointerId = null;
  let last = null;
  canvas.addEventListener('pointerdown', (ev) => {
    if (!ev.isPrimary || (ev.pointerType === 'mouse' && ev.button !== 0)) return;
    ev.preventDefault();
    if (vmi.asleep) {
      wake();
      return;
    }
    if (!screen) return;
    pointerId = ev.pointerId;
    try {
      canvas.setPointerCapture(ev.pointerId);
    } catch {
      // not capturable (synthetic events)
    }
    last = phonePoint(ev);
    sendInput({ kind: 'touch', phase: 0, x: last.x, y: last.y });
  });
  canvas.addEventListener('pointermove', (ev) => {
    if (ev.pointerId !== pointerId) return;
    const p = phonePoint(ev);
    if (p.x === last.x && p.y === last.y) return;
    last = p;
    sendInput({ kind: 'touch', phase: 1, x: p.x, y: p.y });
  });
  const up = (ev) => {
    if (ev.pointerId !== pointerId) return;
    pointerId = null;
    const p = ev.type === 'pointercancel' ? last : phonePoint(ev);
    sendInput({ kind: 'touch', phase: 2, x: p.x, y: p.y });
  };
  canvas.addEventListener('pointerup', up);
  canvas.addEventListener('pointercancel', up);
  canvas.addEventListener('contextmenu', (ev) => ev.preventDefault());
  ui.sleepOverlay.addEventListener('pointerdown', (ev) => {
    ev.preventDefault();
    wake();
  });

  window.addEventListener('keydown', (ev) => {
    if (ev.isComposing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const code = KEY_CODES[ev.key];
    const chars = [...ev.key];
    const printable = code === undefined && chars.length === 1 && ev.key >= ' ';
    if (code === undefined && !printable) return;
    ev.preventDefault();
    if (vmi.asleep) {
      if (code === 2 || ev.key === ' ') wake();
      return;
    }
    if (!screen) return;
    sendInput(printable ? { kind: 'key', code: 0, text: ev.key } : { kind: 'key', code, text: null });
  });
  window.addEventListener('paste', (ev) => {
    if (vmi.asleep || !screen) return;
    const text = ev.clipboardData && ev.clipboardData.getData('text/plain');
    if (!text) return;
    ev.preventDefault();
    for (const ch of text.slice(0, 2000)) {
      if (ch === '\n') sendInput({ kind: 'key', code: 2, text: null });
      else if (ch >= ' ') sendInput({ kind: 'key', code: 0, text: ch });
    }
  });

  const button = (el, fn) =>
    el.addEventListener('click', (ev) => {
      ev.preventDefault();
      el.blur(); // keys go to the phone, not to a focused button
      fn();
    });
  button(ui.sleepBtn, () => sleep(false));
  button(ui.wakeBtn, () => wake());
  button(ui.backBtn, () => !vmi.asleep && screen && sendInput({ kind: 'key', code: 3, text: null }));
  button(ui.homeBtn, () => (vmi.asleep ? wake() : screen && sendInput({ kind: 'key', code: 8, text: null })));

  // ---- go ------------------------------------------------------------------------

  fit();
  renderStatus();
  if (!token) {
    fatal = true;
    vmi.state = 'closed';
    showError('No device token. Open the link your control service gave this device (…/?token=…).');
    return vmi;
  }
  connect(defaultUrl);
  return vmi;
}

if (typeof window !== 'undefined' && typeof document !== 'undefined' && document.getElementById('screen')) {
  start();
}
