// The message codec of docs/PROTOCOL.md (version 4; Welcome of versions 1 to 3 too), byte for byte: decodeServer reads
// what a site sends, encodeClient writes what the terminal sends. Pure: no DOM.

import { ProtocolError } from './protocol-error.js';

export { ProtocolError };

export const PROTOCOL_VERSION = 4;
/** The oldest version a Welcome may carry (a version-1 site sends no InputDurable). */
export const OLDEST_PROTOCOL_VERSION = 1;
/** Largest message either side may send (PROTOCOL.md "Limits"). */
export const MAX_MESSAGE = 16 * 1024 * 1024;
const MAX_STRING = 4096;
const MAX_TOKEN = 512;
const MAX_CLIPBOARD = 65535;
const MAX_TILES = 65536;
const MAX_TILE_SIDE = 4096;
const TWO32 = 0x100000000;

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
  if (enc === 3) {
    // version 4: the rectangle takes the screen's pixels at (sx, sy) (a scroll)
    const sx = r.u16('copy source x');
    const sy = r.u16('copy source y');
    return { x, y, w, h, kind: 'copy', sx, sy };
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
      if (version < OLDEST_PROTOCOL_VERSION || version > PROTOCOL_VERSION) {
        throw new ProtocolError(
          'UnsupportedVersion',
          `found ${version}, supported ${OLDEST_PROTOCOL_VERSION}..${PROTOCOL_VERSION}`,
        );
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
    case 0x88:
      m = { type: 'InputDurable', seq: r.u64('seq') };
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
    case 0x89:
      m = { type: 'Screen', width: r.u16('screen width'), height: r.u16('screen height') };
      break;
    case 0x8a:
      m = { type: 'Clipboard', text: r.string('clipboard text', MAX_CLIPBOARD) };
      break;
    case 0x8b:
      // version 4: the phone is moving to url; open a connection there now and Join it with the ticket
      m = { type: 'Prepare', url: r.string('prepare url'), ticket: r.string('prepare ticket', MAX_TOKEN) };
      break;
    case 0x8c:
      m = { type: 'Joined' };
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

function writeDisplay(w, d) {
  w.u16(d.width);
  w.u16(d.height);
  w.u16(d.density);
}

/**
 * Encodes one terminal -> site message. `m` is one of
 *   {type:'Hello', version?, token, resume?: {last_frame_seq, screen_hash:[lo,hi]}, asleep, display?}
 *   {type:'Display', display: {width, height, density}}   (CSS px, devicePixelRatio x 100)
 *   {type:'Input', seq, input: {kind:'touch', phase:0|1|2, x, y, pointer?} | {kind:'key', code, text?}}
 *   {type:'FrameAck', seq}  {type:'Sleep'}  {type:'Wake'}  {type:'Ping', nonce}
 *   {type:'Join', version?, token, ticket}  {type:'Prepared'}   (version 4: the handoff of a moving phone)
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
      // Versions before 3 have no display field.
      if ((m.version ?? PROTOCOL_VERSION) >= 3) {
        if (m.display) {
          w.u8(1);
          writeDisplay(w, m.display);
        } else {
          w.u8(0);
        }
      }
      break;
    case 'Display':
      w.u8(0x07);
      writeDisplay(w, m.display);
      break;
    case 'Input': {
      w.u8(0x02);
      w.u64(m.seq);
      const inp = m.input;
      if (inp.kind === 'touch') {
        // The first finger is a plain touch; another carries its pointer (version 3).
        const pointer = inp.pointer ?? 0;
        w.u8(pointer === 0 ? 0 : 2);
        w.u8(inp.phase);
        w.u16(inp.x);
        w.u16(inp.y);
        if (pointer !== 0) w.u8(pointer);
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
    case 'Join':
      w.u8(0x08);
      w.u16(m.version ?? PROTOCOL_VERSION);
      w.string(m.token, MAX_TOKEN);
      w.string(m.ticket, MAX_TOKEN);
      break;
    case 'Prepared':
      w.u8(0x09);
      break;
    default:
      throw new RangeError(`unknown message type ${m.type}`);
  }
  return w.done();
}
