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
  startMap({ vmi, token, relayout: fit });
  startHistory({ vmi, token });
  return vmi;
}

// ---------------------------------------------------------------------------------
// Follow me: the map beside the phone
// ---------------------------------------------------------------------------------
//
// Where the sites are (health, phones), where the user is (a marker they can drag),
// which site runs their phone, the round trip to each site, and the phone's migrations.
// Everything comes from the serving site's /v1/demo/* routes, which ask the control
// service; a site without them (or the mock) leaves the panel hidden. Dragging reports
// the position to the control service (on drop, and every 2 s while dragging); the
// placer moves the phone when another site stays closer, and the Redirect above makes
// the terminal follow.

const MAP_W = 400;
const MAP_H = 300;
const MAP_POLL_MS = 2000; // sites, phone, migrations, latest report
const MAP_RETRY_MS = 10000; // while the routes are missing, or the screen is off
const DRAG_REPORT_MS = 2000;
const REPORT_EVERY_MS = 5000; // keeps the position fresh once this page has set it
const PROBE_SETTLE_MS = 800; // the delay proxies pick up a reported position within ~0.5 s
const PROBES_KEPT = 3;
const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * An equirectangular projection of the box around `points` ({lat, lon}) onto a w×h
 * picture, with `margin` of the box's span on every side. Returns {x(lon), y(lat),
 * lon(x), lat(y), kmPerPx, scale, k}. Pure (used by the map, testable under node).
 */
export function mapProjection(points, w = MAP_W, h = MAP_H, margin = 0.3) {
  let minLat = Infinity;
  let maxLat = -Infinity;
  let minLon = Infinity;
  let maxLon = -Infinity;
  for (const p of points) {
    minLat = Math.min(minLat, p.lat);
    maxLat = Math.max(maxLat, p.lat);
    minLon = Math.min(minLon, p.lon);
    maxLon = Math.max(maxLon, p.lon);
  }
  if (!Number.isFinite(minLat)) minLat = maxLat = minLon = maxLon = 0;
  const latC = (minLat + maxLat) / 2;
  const lonC = (minLon + maxLon) / 2;
  const k = Math.max(0.05, Math.cos((latC * Math.PI) / 180)); // a degree of longitude, in degrees of latitude
  const spanX = Math.max((maxLon - minLon) * k, 0.02) * (1 + 2 * margin);
  const spanY = Math.max(maxLat - minLat, 0.02) * (1 + 2 * margin);
  const scale = Math.min(w / spanX, h / spanY); // pixels per degree of latitude
  return {
    x: (lon) => w / 2 + (lon - lonC) * k * scale,
    y: (lat) => h / 2 - (lat - latC) * scale,
    lon: (x) => lonC + (x - w / 2) / (k * scale),
    lat: (y) => latC - (y - h / 2) / scale,
    kmPerPx: 111.195 / scale,
    scale,
    k,
  };
}

/** Microseconds as people read them: "840 µs", "5.4 ms", "1.20 s". */
export function formatMicros(us) {
  if (!Number.isFinite(us)) return '–';
  if (us < 1000) return `${Math.round(us)} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 10000 ? 1 : 0)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

function formatAgo(atMs, nowMs) {
  const s = Math.max(0, Math.round((nowMs - atMs) / 1000));
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return new Date(atMs).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function svgEl(tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

/** A "nice" step (1, 2 or 5 × 10^n) of at least `min`. */
function niceStep(min) {
  const p = 10 ** Math.floor(Math.log10(min));
  for (const m of [1, 2, 5, 10]) if (m * p >= min) return m * p;
  return 10 * p;
}

const HISTORY_POLL_MS = 30000;

// "Restore my phone to…": the phone's checkpoints (from whichever site runs it) and a
// restore button per checkpoint that asks once more before it acts. The phone is
// replaced in place: this terminal stays connected and receives the restored screen.
function startHistory({ vmi, token }) {
  const $ = (id) => document.getElementById(id);
  const list = $('hist-list');
  if (!list || !token) return;
  const auth = { Authorization: `Bearer ${token}` };
  const ui = { sub: $('hist-sub'), empty: $('hist-empty'), save: $('hist-save'), banner: $('hist-banner') };
  // what the view shows (also read by tests through window.vmi.history)
  const history = { checkpoints: [], restored: null, saved: null, error: null, loads: 0 };
  vmi.history = history;
  let armed = null; // the id whose button asks "Sure?"
  let busy = false;

  function when(ms) {
    const d = new Date(ms);
    const age = Math.max(0, Date.now() - ms);
    const mins = Math.round(age / 60000);
    const ago = mins < 1 ? 'just now' : mins < 60 ? `${mins} min ago`
      : mins < 48 * 60 ? `${Math.round(mins / 60)} h ago` : `${Math.round(mins / 1440)} days ago`;
    return { text: d.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' }), ago };
  }

  function banner(text) {
    ui.banner.textContent = text;
    ui.banner.hidden = !text;
  }

  function render() {
    list.replaceChildren();
    const newest = [...history.checkpoints].reverse();
    for (const c of newest) {
      const li = document.createElement('li');
      li.dataset.id = c.id;
      if (history.restored === c.id) li.classList.add('current');
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
      b.className = 'btn small' + (armed === c.id ? ' confirm' : '');
      b.textContent = armed === c.id ? 'Sure?' : 'Restore';
      b.title = 'Bring the phone back to this moment (what it has now is saved first)';
      b.disabled = busy;
      b.addEventListener('click', () => onRestore(c));
      li.append(info, label, b);
      list.append(li);
    }
    ui.empty.hidden = history.checkpoints.length > 0;
    ui.sub.textContent = history.checkpoints.length
      ? `${history.checkpoints.length} checkpoints, oldest ${when(history.checkpoints[0].at_ms).ago}`
      : 'Checkpoints of your phone';
    ui.save.disabled = busy;
  }

  async function load() {
    try {
      const v = await getJson('/v1/me/checkpoints', auth);
      history.checkpoints = Array.isArray(v.checkpoints) ? v.checkpoints : [];
      history.loads += 1;
      history.error = null;
    } catch (e) {
      history.error = String(e);
    }
    render();
  }

  async function post(path, body) {
    const r = await fetch(path, {
      method: 'POST',
      headers: { ...auth, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const v = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(v.error || `${r.status}`);
    return v;
  }

  async function onRestore(c) {
    if (busy) return;
    if (armed !== c.id) {
      armed = c.id;
      render();
      return;
    }
    armed = null;
    busy = true;
    render();
    try {
      const v = await post('/v1/me/checkpoints/restore', { id: c.id });
      history.restored = v.restored.id;
      banner(`Your phone is back to ${when(v.restored.at_ms).text}. What it had before is kept as a checkpoint.`);
    } catch (e) {
      history.error = String(e.message || e);
      banner(`Could not restore: ${history.error}`);
    }
    busy = false;
    await load();
  }

  ui.save.addEventListener('click', async () => {
    if (busy) return;
    busy = true;
    render();
    try {
      const v = await post('/v1/me/checkpoints', { label: 'saved from the browser' });
      history.saved = v.checkpoint.id;
      banner(v.replica ? `Saved, with a copy on ${v.replica}.` : 'Saved (no second site for a copy yet).');
    } catch (e) {
      history.error = String(e.message || e);
      banner(`Could not save: ${history.error}`);
    }
    busy = false;
    await load();
  });

  async function poll() {
    if (!vmi.asleep) await load();
    setTimeout(poll, HISTORY_POLL_MS);
  }
  poll();
}

async function getJson(path, headers) {
  const r = await fetch(path, { headers, cache: 'no-store' });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.status === 204 ? null : r.json();
}

function startMap({ vmi, token, relayout }) {
  const $ = (id) => document.getElementById(id);
  const svg = $('map');
  if (!svg || !token) return;
  const ui = {
    side: $('side'),
    btn: $('map-btn'),
    where: $('fm-where'),
    rtt: $('fm-rtt'),
    hint: $('fm-hint'),
    sites: $('fm-sites').tBodies[0],
    moves: $('fm-moves'),
    empty: $('fm-empty'),
    count: $('fm-count'),
    banner: $('fm-banner'),
  };
  const auth = { Authorization: `Bearer ${token}` };

  // what the page shows (also read by tests through window.vmi.map)
  const map = {
    available: false, // the serving site answers /v1/demo/*
    user: null,
    site: null, // the site running the phone
    position: null, // {lat, lon}: where the user is
    sites: [], // [{id, url, lat, lon, phones, healthy, draining, rtt_ms}]
    migrations: 0, // migrations listed
    reports: 0, // positions this page reported
    lastMove: null, // the newest migration seen arrive while the page was open
  };
  vmi.map = map;

  let sites = [];
  let proj = null;
  let projKey = '';
  let owns = false; // the user placed the marker in this page: it reports from now on
  let dragging = false;
  let posVersion = 0; // bumps on every change of position
  let reportedVersion = -1; // the position the control service (and so the proxies) has
  let lastReportAt = 0; // Date.now() when this page last reported
  let lastDragReport = 0;
  let freshSince = Infinity; // probes from this time on saw the reported position
  const probes = new Map(); // site id -> [{ms, at}]
  let seen = null; // migration ids already listed (null before the first answer)
  const rows = new Map(); // migration id -> <li>
  let bannerTimer = 0;
  let movedTimer = 0;

  // ---- the picture: static layers built once per set of sites ------------------

  const layers = {};
  const marks = new Map(); // site id -> {g, link, label}
  let you = null;

  function build() {
    svg.replaceChildren();
    marks.clear();
    const defs = svgEl('defs', {}, svg);
    const bg = svgEl('radialGradient', { id: 'fm-bg', cx: '50%', cy: '45%', r: '75%' }, defs);
    svgEl('stop', { offset: '0%', 'stop-color': '#141b29' }, bg);
    svgEl('stop', { offset: '100%', 'stop-color': '#0a0d13' }, bg);
    for (const [state, color] of [['ok', '#3ecf8e'], ['draining', '#f5b84a'], ['down', '#ff6b6b']]) {
      const area = svgEl('radialGradient', { id: `fm-area-${state}` }, defs);
      svgEl('stop', { offset: '0%', 'stop-color': color, 'stop-opacity': '0.16' }, area);
      svgEl('stop', { offset: '100%', 'stop-color': color, 'stop-opacity': '0' }, area);
    }
    const dots = svgEl('pattern', { id: 'fm-dots', width: 12, height: 12, patternUnits: 'userSpaceOnUse' }, defs);
    svgEl('circle', { cx: 6, cy: 6, r: 0.8, fill: 'rgba(150,170,210,0.10)' }, dots);
    svgEl('rect', { width: MAP_W, height: MAP_H, fill: 'url(#fm-bg)' }, svg);
    svgEl('rect', { width: MAP_W, height: MAP_H, fill: 'url(#fm-dots)' }, svg);

    // graticule, labelled at the edges
    const grid = svgEl('g', { class: 'grid' }, svg);
    const latStep = niceStep(55 / proj.scale);
    const lonStep = niceStep(55 / (proj.scale * proj.k));
    for (let lat = Math.ceil(proj.lat(MAP_H) / latStep) * latStep; lat < proj.lat(0); lat += latStep) {
      const y = proj.y(lat);
      svgEl('line', { x1: 0, x2: MAP_W, y1: y, y2: y }, grid);
      svgEl('text', { x: 4, y: y - 3 }, grid).textContent = `${lat.toFixed(latStep < 0.1 ? 2 : 1)}°N`;
    }
    for (let lon = Math.ceil(proj.lon(0) / lonStep) * lonStep; lon < proj.lon(MAP_W); lon += lonStep) {
      const x = proj.x(lon);
      svgEl('line', { x1: x, x2: x, y1: 0, y2: MAP_H }, grid);
      svgEl('text', { x: x + 3, y: MAP_H - 5 }, grid).textContent = `${lon.toFixed(lonStep < 0.1 ? 2 : 1)}°E`;
    }

    // scale bar, bottom right
    const km = niceStep(70 * proj.kmPerPx);
    const len = km / proj.kmPerPx;
    const scale = svgEl('g', { class: 'scale' }, svg);
    const x1 = MAP_W - 14 - len;
    const y = MAP_H - 16;
    svgEl('line', { x1, x2: MAP_W - 14, y1: y, y2: y }, scale);
    svgEl('line', { x1, x2: x1, y1: y - 4, y2: y + 1 }, scale);
    svgEl('line', { x1: MAP_W - 14, x2: MAP_W - 14, y1: y - 4, y2: y + 1 }, scale);
    svgEl('text', { x: MAP_W - 14 - len / 2, y: y - 6, 'text-anchor': 'middle' }, scale).textContent = `${km} km`;

    layers.areas = svgEl('g', {}, svg);
    layers.links = svgEl('g', {}, svg);
    layers.sites = svgEl('g', {}, svg);
    layers.labels = svgEl('g', {}, svg);
    layers.you = svgEl('g', {}, svg);

    for (const s of sites) {
      const x = proj.x(s.lon);
      const yy = proj.y(s.lat);
      const g = svgEl('g', { class: 'site' }, layers.sites);
      const area = svgEl('circle', { cx: x, cy: yy, r: 46, fill: 'url(#fm-area-ok)' }, layers.areas);
      svgEl('circle', { class: 'pulse', cx: x, cy: yy, r: 11 }, g);
      svgEl('circle', { class: 'ring', cx: x, cy: yy, r: 13 }, g);
      svgEl('circle', { class: 'pin', cx: x, cy: yy, r: 7.5 }, g);
      const badge = svgEl('g', { class: 'badge', transform: `translate(${x + 10} ${yy - 11})` }, g);
      svgEl('circle', { r: 7.5 }, badge);
      svgEl('rect', { x: -2.6, y: -4.2, width: 5.2, height: 8.4, rx: 1.3 }, badge);
      const name = svgEl('text', { class: 'site-name' }, g);
      name.textContent = s.id;
      const meta = svgEl('text', { class: 'site-meta' }, g);
      const link = svgEl('line', { class: 'link', x2: x, y2: yy }, layers.links);
      const label = svgEl('g', { class: 'link-label' }, layers.labels);
      const box = svgEl('rect', { rx: 6, height: 15 }, label);
      const text = svgEl('text', { 'text-anchor': 'middle' }, label);
      marks.set(s.id, { g, area, name, meta, link, label, box, text });
    }

    you = svgEl('g', { class: 'you' }, layers.you);
    svgEl('circle', { class: 'halo', r: 16 }, you);
    svgEl('circle', { class: 'pin', r: 7.5 }, you);
    svgEl('text', { y: -14, 'text-anchor': 'middle' }, you).textContent = 'YOU';
  }

  // ---- drawing -------------------------------------------------------------------

  /** The round trip to a site: the least of the samples taken since the proxies follow the
   * position the control service has (`freshOnly`), or else the newest sample. */
  function rttOf(id, freshOnly) {
    const all = probes.get(id) || [];
    const fresh = all.filter((p) => p.at >= freshSince);
    if (fresh.length) return Math.min(...fresh.map((p) => p.ms));
    return freshOnly || !all.length ? null : all[all.length - 1].ms;
  }

  /** Puts a site's two label lines beside it where they fit and do not cover the user. */
  function placeLabel(m, sx, sy, ux, uy) {
    const w = Math.max(m.name.textContent.length, m.meta.textContent.length) * 6.2 + 4;
    const options = [
      [sx + 21, sy + 1, 'start', sx + 21],
      [sx - 16, sy + 1, 'end', sx - 16 - w],
      [sx, sy + 26, 'middle', sx - w / 2],
      [sx, sy - 30, 'middle', sx - w / 2],
    ].map(([x, y, anchor, left]) => ({ x, y, anchor, left, top: y - 11 }));
    const fits = (o) => o.left >= 2 && o.left + w <= MAP_W - 2 && o.top >= 2 && o.top + 26 <= MAP_H - 18;
    const clear = (o) => !(ux > o.left - 14 && ux < o.left + w + 14 && uy > o.top - 14 && uy < o.top + 40);
    const o = options.find((c) => fits(c) && clear(c)) || options.find(fits) || options[0];
    for (const [el, dy] of [[m.name, 0], [m.meta, 13]]) {
      el.setAttribute('x', o.x);
      el.setAttribute('y', o.y + dy);
      el.setAttribute('text-anchor', o.anchor);
    }
  }

  function draw() {
    if (!map.available || !sites.length) return;
    const key = sites.map((s) => `${s.id}@${s.lat},${s.lon}`).join('|');
    if (key !== projKey) {
      projKey = key;
      proj = mapProjection(sites);
      build();
    }
    const pos = map.position;
    const ux = pos ? Math.min(MAP_W - 8, Math.max(8, proj.x(pos.lon))) : -100;
    const uy = pos ? Math.min(MAP_H - 8, Math.max(8, proj.y(pos.lat))) : -100;
    you.setAttribute('transform', `translate(${ux} ${uy})`);
    you.style.display = pos ? '' : 'none';
    // on top of a site, the site's own label says where: no "YOU" over it
    const onSite = sites.some((s) => Math.hypot(proj.x(s.lon) - ux, proj.y(s.lat) - uy) < 36);
    you.lastChild.style.display = onSite ? 'none' : '';

    const rtts = sites.map((s) => rttOf(s.id, false));
    const known = rtts.filter((r) => r !== null);
    const best = known.length ? Math.min(...known) : null;
    map.sites = sites.map((s, i) => ({ ...s, rtt_ms: rtts[i] === null ? null : Math.round(rtts[i] * 10) / 10 }));

    const body = document.createDocumentFragment();
    sites.forEach((s, i) => {
      const m = marks.get(s.id);
      const state = !s.healthy ? 'down' : s.draining ? 'draining' : 'ok';
      const home = s.id === map.site;
      m.g.setAttribute('class', `site ${state}${home ? ' home' : ''}`);
      m.area.setAttribute('fill', `url(#fm-area-${state})`);
      const phones = `${s.phones} phone${s.phones === 1 ? '' : 's'}`;
      m.meta.textContent = state === 'ok' ? phones : `${phones} · ${state === 'down' ? 'down' : 'draining'}`;
      placeLabel(m, proj.x(s.lon), proj.y(s.lat), ux, uy);
      m.link.setAttribute('x1', ux);
      m.link.setAttribute('y1', uy);
      m.link.setAttribute('class', home ? 'link active' : 'link');
      m.link.style.display = pos ? '' : 'none';
      const ms = rtts[i];
      const sx = proj.x(s.lon);
      const sy = proj.y(s.lat);
      // a label on a short line would sit on the markers
      m.label.style.display = pos && ms !== null && Math.hypot(sx - ux, sy - uy) > 60 ? '' : 'none';
      m.label.setAttribute('class', home ? 'link-label active' : 'link-label');
      if (pos && ms !== null) {
        const lx = ux + (sx - ux) * 0.5;
        const ly = uy + (sy - uy) * 0.5;
        m.text.textContent = `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
        const w = m.text.textContent.length * 5.6 + 10;
        m.box.setAttribute('x', lx - w / 2);
        m.box.setAttribute('y', ly - 8);
        m.box.setAttribute('width', w);
        m.text.setAttribute('x', lx);
        m.text.setAttribute('y', ly + 3.5);
      }

      const tr = document.createElement('tr');
      if (home) tr.className = 'home';
      const name = document.createElement('td');
      const dot = document.createElement('span');
      dot.className = `sdot ${state}`;
      name.append(dot, s.id);
      const tag = (text, cls) => {
        const t = document.createElement('span');
        t.className = `tag${cls ? ` ${cls}` : ''}`;
        t.textContent = text;
        name.append(t);
      };
      if (home) tag('your phone');
      if (state === 'draining') tag('draining', 'warn');
      if (state === 'down') tag('down', 'bad');
      const count = document.createElement('td');
      count.textContent = String(s.phones);
      const rtt = document.createElement('td');
      rtt.className = `num${ms !== null && ms === best && known.length > 1 ? ' best' : ''}`;
      rtt.textContent = ms === null ? '–' : `${ms.toFixed(1)} ms`;
      tr.append(name, count, rtt);
      body.append(tr);
    });
    ui.sites.replaceChildren(body);

    ui.where.replaceChildren();
    if (map.site) {
      const b = (t) => {
        const el = document.createElement('b');
        el.textContent = t;
        return el;
      };
      ui.where.append(`${map.user}’s phone runs on `, b(map.site));
    }
    ui.rtt.textContent = vmi.latencyMs === null ? '–' : String(vmi.latencyMs);
    hint(rtts);
    const now = Date.now();
    for (const li of rows.values()) li.querySelector('.fm-when').textContent = formatAgo(Number(li.dataset.at), now);
  }

  function hint(rtts) {
    const i = sites.findIndex((s) => s.id === map.site);
    const here = i >= 0 ? rtts[i] : null;
    let bestI = -1;
    sites.forEach((s, j) => {
      if (rtts[j] !== null && s.healthy && !s.draining && (bestI < 0 || rtts[j] < rtts[bestI])) bestI = j;
    });
    ui.hint.className = 'fm-hint';
    if (here !== null && bestI >= 0 && bestI !== i) {
      const gain = here - rtts[bestI];
      // the placer's default margin: 2 ms and 20 %
      if (gain >= 2 && gain >= 0.2 * here) {
        ui.hint.className = 'fm-hint closer';
        const b = document.createElement('b');
        b.textContent = sites[bestI].id;
        ui.hint.replaceChildren(
          b,
          ` is closer (${rtts[bestI].toFixed(0)} ms, against ${here.toFixed(0)} ms). Stay a while and your phone follows you there.`,
        );
        return;
      }
    }
    if (!owns) {
      ui.hint.textContent = 'Drag the blue dot: that is you. Walk toward another site and your phone follows, live.';
    } else if (bestI === i && i >= 0) {
      ui.hint.textContent = 'Your phone runs on the closest site.';
    } else {
      ui.hint.textContent = 'Measuring the round trip to each site…';
    }
  }

  let drawQueued = false;
  function queueDraw() {
    if (drawQueued) return;
    drawQueued = true;
    setTimeout(() => {
      drawQueued = false;
      draw();
    }, 16);
  }

  // ---- migrations ----------------------------------------------------------------

  function moveRow(m, fresh) {
    const li = document.createElement('li');
    li.className = `fm-move${m.outcome === 'committed' ? '' : ' aborted'}${fresh ? ' new' : ''}`;
    li.dataset.at = String(m.at_ms);
    const route = document.createElement('div');
    route.className = 'fm-route';
    const arrow = document.createElement('span');
    arrow.className = 'arrow';
    arrow.textContent = '→';
    route.append(m.from, arrow, m.to);
    if (m.outcome !== 'committed') route.append(` (${m.outcome})`);
    const when = document.createElement('div');
    when.className = 'fm-when';
    when.textContent = formatAgo(m.at_ms, Date.now());
    const figs = document.createElement('div');
    figs.className = 'fm-figs';
    const fig = (value, label) => {
      const span = document.createElement('span');
      const b = document.createElement('b');
      b.textContent = value;
      span.append(b, ` ${label}`);
      figs.append(span);
    };
    fig(formatMicros(m.downtime_us), 'downtime');
    fig(`${Math.round(m.total_ms)} ms`, 'in all');
    fig(formatBytes(m.bytes), 'sent');
    li.append(route, when, figs);
    if (m.reason && m.outcome !== 'committed') li.title = m.reason;
    return li;
  }

  function onMigrations(list) {
    list = list.filter((m) => m && typeof m.id === 'number');
    const fresh = seen === null ? [] : list.filter((m) => !seen.has(m.id));
    seen = new Set(list.map((m) => m.id));
    // the log only grows: new entries go on top, newest first
    for (const m of list.filter((x) => !rows.has(x.id)).reverse()) {
      const li = moveRow(m, fresh.includes(m));
      rows.set(m.id, li);
      ui.moves.prepend(li);
    }
    while (rows.size > 20) {
      const oldest = Math.min(...rows.keys());
      rows.get(oldest).remove();
      rows.delete(oldest);
    }
    map.migrations = list.length;
    ui.empty.hidden = list.length > 0;
    ui.count.textContent = list.length ? `${list.length} for ${map.user}` : '';
    if (fresh.length) announce(fresh[0]);
  }

  function announce(m) {
    map.lastMove = m;
    const ok = m.outcome === 'committed';
    ui.banner.className = `fm-banner${ok ? '' : ' aborted'}`;
    const b = (t) => {
      const el = document.createElement('b');
      el.textContent = t;
      return el;
    };
    if (ok) {
      ui.banner.replaceChildren(
        'Your phone moved ',
        b(`${m.from} → ${m.to}`),
        ` · ${formatMicros(m.downtime_us)} downtime, ${Math.round(m.total_ms)} ms in all`,
      );
    } else {
      ui.banner.replaceChildren('A move to ', b(m.to), ` was aborted${m.reason ? `: ${m.reason}` : ''}`);
    }
    ui.banner.hidden = false;
    ui.hint.hidden = true;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(() => {
      ui.banner.hidden = true;
      ui.hint.hidden = false;
    }, 8000);
    svg.classList.add('moved');
    clearTimeout(movedTimer);
    movedTimer = setTimeout(() => svg.classList.remove('moved'), 1500);
    for (const li of rows.values()) {
      if (li.classList.contains('new') && Number(li.dataset.at) !== m.at_ms) li.classList.remove('new');
    }
  }

  /** Sites count phones in their heartbeats (every few seconds): until both ends of the
   * newest migration have sent one since, count the phone where it went. */
  function countMove(m) {
    if (!m || m.outcome !== 'committed') return;
    sites = sites.map((s) => {
      if (!(s.last_heartbeat_ms < m.at_ms)) return s;
      if (s.id === m.from) return { ...s, phones: Math.max(0, s.phones - 1) };
      if (s.id === m.to) return { ...s, phones: s.phones + 1 };
      return s;
    });
  }

  // ---- position ------------------------------------------------------------------

  function setPosition(lat, lon) {
    const p = map.position;
    if (p && p.lat === lat && p.lon === lon) return;
    map.position = { lat, lon };
    posVersion++;
    queueDraw();
  }

  function onReport(r) {
    // Another terminal of this user (or this page, echoed) reported after this page did:
    // that is where the user is now. An older report must not undo a drop.
    if (dragging || !r || typeof r.lat !== 'number' || typeof r.lon !== 'number') return;
    if (r.at_ms < lastReportAt) return;
    const before = posVersion;
    setPosition(r.lat, r.lon);
    // the proxies already follow this position
    if (posVersion !== before) positionLanded(posVersion);
  }

  async function report(withRtt) {
    const p = map.position;
    if (!p) return;
    const body = { lat: Math.round(p.lat * 1e6) / 1e6, lon: Math.round(p.lon * 1e6) / 1e6 };
    if (withRtt && reportedVersion === posVersion) {
      const rtt = {};
      for (const s of sites) {
        const ms = rttOf(s.id, true);
        if (ms !== null) rtt[s.id] = Math.round(ms * 100) / 100;
      }
      if (Object.keys(rtt).length) body.rtt_ms = rtt;
    }
    const version = posVersion;
    lastReportAt = Date.now();
    try {
      const r = await fetch('/v1/demo/report', {
        method: 'POST',
        headers: { ...auth, 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
      if (!r.ok) return;
      map.reports++;
      if (reportedVersion !== version) positionLanded(version);
    } catch {
      // the next report tries again
    }
  }

  // ---- polling and probing -------------------------------------------------------

  const visible = () => document.visibilityState === 'visible';

  async function poll() {
    let wait = map.available ? MAP_POLL_MS : MAP_RETRY_MS;
    if (visible()) {
      try {
        const [me, list] = await Promise.all([getJson('/v1/demo/me', auth), getJson('/v1/demo/sites')]);
        map.user = me.user;
        map.site = me.site;
        sites = (Array.isArray(list) ? list : [])
          .filter((s) => s && typeof s.id === 'string' && Number.isFinite(s.lat) && Number.isFinite(s.lon))
          .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
        const [moves, last] = await Promise.allSettled([
          getJson(`/v1/demo/migrations?user=${encodeURIComponent(me.user)}`),
          getJson('/v1/demo/report', auth),
        ]);
        if (moves.status === 'fulfilled' && Array.isArray(moves.value)) onMigrations(moves.value);
        countMove(moves.status === 'fulfilled' && Array.isArray(moves.value) ? moves.value[0] : null);
        if (last.status === 'fulfilled') onReport(last.value);
        // Until someone reports, the user stands at the first site (as the delay proxies assume).
        if (!map.position && sites.length) setPosition(sites[0].lat, sites[0].lon);
        if (!map.available && sites.length) {
          map.available = true;
          ui.side.hidden = false;
          ui.btn.hidden = false;
          document.body.classList.add('with-map');
          relayout();
        }
        draw();
        wait = vmi.asleep ? MAP_RETRY_MS : MAP_POLL_MS;
      } catch {
        // no /v1/demo routes here, or the control service is away: try again later
      }
    }
    setTimeout(poll, wait);
  }

  let probing = false;
  async function probeOnce() {
    if (probing || !map.available || !visible() || vmi.asleep) return;
    probing = true;
    try {
      await Promise.all(
        sites.map(async (s) => {
          const at = performance.now();
          try {
            // an opaque answer is enough: only the time matters
            await fetch(`${s.url}/healthz`, { mode: 'no-cors', cache: 'no-store' });
          } catch {
            return;
          }
          const list = probes.get(s.id) || [];
          list.push({ ms: performance.now() - at, at });
          if (list.length > PROBES_KEPT) list.shift();
          probes.set(s.id, list);
        }),
      );
    } finally {
      probing = false;
    }
    queueDraw();
  }

  async function probe() {
    await probeOnce();
    setTimeout(probe, MAP_POLL_MS);
  }

  /** The proxies now delay by the position the control service has. */
  function positionLanded(version) {
    reportedVersion = version;
    freshSince = performance.now() + PROBE_SETTLE_MS;
    setTimeout(probeOnce, PROBE_SETTLE_MS + 20);
  }

  setInterval(() => {
    if (owns && !dragging && visible()) report(true);
  }, REPORT_EVERY_MS);
  setInterval(() => map.available && visible() && queueDraw(), 1000);

  // ---- dragging ------------------------------------------------------------------

  function moveTo(ev) {
    const m = svg.getScreenCTM();
    if (!m || !proj) return;
    const p = new DOMPoint(ev.clientX, ev.clientY).matrixTransform(m.inverse());
    const x = Math.min(MAP_W - 8, Math.max(8, p.x));
    const y = Math.min(MAP_H - 8, Math.max(8, p.y));
    setPosition(proj.lat(y), proj.lon(x));
    draw();
  }

  svg.addEventListener('pointerdown', (ev) => {
    if (!proj || !ev.isPrimary || (ev.pointerType === 'mouse' && ev.button !== 0)) return;
    ev.preventDefault();
    dragging = true;
    owns = true;
    lastDragReport = performance.now();
    try {
      svg.setPointerCapture(ev.pointerId);
    } catch {
      // synthetic events cannot be captured
    }
    svg.classList.add('dragging');
    moveTo(ev);
  });
  svg.addEventListener('pointermove', (ev) => {
    if (!dragging) return;
    moveTo(ev);
    if (performance.now() - lastDragReport >= DRAG_REPORT_MS) {
      lastDragReport = performance.now();
      report(false);
    }
  });
  const drop = (ev) => {
    if (!dragging) return;
    if (ev.type === 'pointerup') moveTo(ev);
    dragging = false;
    svg.classList.remove('dragging');
    report(false);
  };
  svg.addEventListener('pointerup', drop);
  svg.addEventListener('pointercancel', drop);

  if (ui.btn) {
    ui.btn.addEventListener('click', (ev) => {
      ev.preventDefault();
      ui.btn.blur();
      document.body.classList.toggle('map-open');
      relayout();
    });
  }

  poll();
  probe();
}

if (typeof window !== 'undefined' && typeof document !== 'undefined' && document.getElementById('screen')) {
  start();
}
