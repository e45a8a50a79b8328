// Unit tests of the browser terminal's pure modules (crates/vmi-site/web/): LZ4 block
// decoding (lz4.js), the message codec of docs/PROTOCOL.md (codec.js), screen updates
// and the screen hash (screen.js), the inputs kept for a resend (kept-inputs.js) and
// the map's projection and move counting (map-picture.js, map-moves.js).
// Node only, no dependencies:   node tests/browser/unit.mjs
// (web/package.json says "type": "module", so node reads the browser's .js files as ES modules.)
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { ProtocolError, decodeServer, encodeClient } from '../../crates/vmi-site/web/codec.js';
import { KeptInputs, MAX_KEPT_INPUTS } from '../../crates/vmi-site/web/kept-inputs.js';
import { lz4DecodeBlock } from '../../crates/vmi-site/web/lz4.js';
import { countOf, localLabel, when } from '../../crates/vmi-site/web/history.js';
import { followHint } from '../../crates/vmi-site/web/follow-hint.js';
import { RoundTrips } from '../../crates/vmi-site/web/map-latency.js';
import { countMove } from '../../crates/vmi-site/web/map-moves.js';
import { qualityLevel } from '../../crates/vmi-site/web/status.js';
import { mapProjection } from '../../crates/vmi-site/web/map-picture.js';
import { Screen, hashHex, screenHashParts } from '../../crates/vmi-site/web/screen.js';

const here = dirname(fileURLToPath(import.meta.url));

let passed = 0;
let failed = 0;
async function test(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}\n     ${(e && e.stack) || e}`);
  }
}

const hex = (s) => Uint8Array.from(s.trim().split(/\s+/).filter(Boolean), (b) => parseInt(b, 16));
const toHex = (u8) => Array.from(u8, (b) => b.toString(16).padStart(2, '0').toUpperCase()).join(' ');
const throwsKind = (fn, kind) =>
  assert.throws(fn, (e) => {
    assert.ok(e instanceof ProtocolError, `not a ProtocolError: ${e}`);
    assert.equal(e.kind, kind, `kind ${e.kind} (${e.message}), expected ${kind}`);
    return true;
  });

// A small builder for site -> terminal messages (the test's own encoder, written from
// PROTOCOL.md independently of the decoder under test).
class B {
  constructor() {
    this.a = [];
  }
  u8(x) {
    this.a.push(x & 255);
    return this;
  }
  u16(x) {
    return this.u8(x).u8(x >>> 8);
  }
  u32(x) {
    return this.u16(x & 0xffff).u16(x >>> 16);
  }
  u64(x) {
    return this.u32(x % 2 ** 32).u32(Math.floor(x / 2 ** 32));
  }
  str(s) {
    const b = new TextEncoder().encode(s);
    this.u16(b.length);
    this.a.push(...b);
    return this;
  }
  raw(bytes) {
    for (const b of bytes) this.a.push(b);
    return this;
  }
  done() {
    return Uint8Array.from(this.a);
  }
}

// ---- the screen hash ---------------------------------------------------------------

await test('screen hash: PROTOCOL.md vectors', () => {
  const v = (bytes) => {
    const [lo, hi] = screenHashParts(bytes);
    return `0x${hi.toString(16).toUpperCase().padStart(8, '0')}_${lo.toString(16).toUpperCase().padStart(8, '0')}`;
  };
  assert.equal(v(new Uint8Array(0)), '0x9E3779B9_811C9DC5');
  assert.equal(v(Uint8Array.of(0x61)), '0xD58782B8_E40C292C');
  assert.equal(v(hex('FF 00 00 FF 00 00 FF FF')), '0xCD13D999_F2B58399');
  assert.equal(v(new Uint8Array(720 * 1280 * 4)), '0x7B1279B9_9BC99DC5');
  assert.equal(hashHex(screenHashParts(new Uint8Array(0))), '9e3779b9811c9dc5');
});

await test('screen hash: a fresh 720x1280 Screen hashes as all-zero bytes', () => {
  const s = new Screen(720, 1280);
  assert.equal(hashHex(s.hash()), '7b1279b99bc99dc5');
});

// ---- LZ4 -------------------------------------------------------------------------------

function xorshift(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

// The generators of tests/browser/fixtures/make_lz4.py, byte for byte.
function gen(spec) {
  const n = spec.n ?? 0;
  switch (spec.kind) {
    case 'zeros':
      return new Uint8Array(n);
    case 'seq':
      return Uint8Array.from({ length: n }, (_, i) => i & 255);
    case 'random': {
      const r = xorshift(spec.seed);
      return Uint8Array.from({ length: n }, () => r() & 255);
    }
    case 'text': {
      const r = xorshift(spec.seed);
      const base = new TextEncoder().encode('Hello from Chromium! Lunch? Noon. ');
      const out = Uint8Array.from({ length: n }, (_, i) => base[i % base.length]);
      for (let i = 0; i < n; i += 37) out[i] = 97 + (r() % 26);
      return out;
    }
    case 'runs': {
      const r = xorshift(spec.seed);
      const out = [];
      while (out.length < n) {
        const k = r() % 4;
        if (k === 0) {
          for (let c = r() % 300; c > 0; c--) out.push(r() & 255);
        } else {
          const period = 1 + (r() % 6);
          const pat = Array.from({ length: period }, () => r() & 255);
          for (let j = 0, c = r() % 700; j < c; j++) out.push(pat[j % period]);
        }
      }
      return Uint8Array.from(out.slice(0, n));
    }
    case 'tile': {
      const { w, h } = spec;
      const r = xorshift(spec.seed);
      const out = new Uint8Array(w * h * 4);
      let o = 0;
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          let px;
          if (y >= 10 && y < 20) px = [30, 120, 220, 255];
          else if (y >= h >> 1 && y < (h >> 1) + 12 && r() % 9 === 0) px = [20, 20, 20, 255];
          else if (((x >> 3) + (y >> 3)) % 5 === 0) px = [x & 255, y & 255, 200, 255];
          else px = [240, 240, 245, 255];
          out.set(px, o);
          o += 4;
        }
      }
      return out;
    }
    default:
      throw new Error(`unknown generator ${spec.kind}`);
  }
}

const fixtures = JSON.parse(readFileSync(join(here, 'fixtures', 'lz4.json'), 'utf8'));

await test(`lz4: ${fixtures.cases.length} blocks from the reference C library (${fixtures.made_by})`, () => {
  for (const c of fixtures.cases) {
    const want = gen(c.gen);
    assert.equal(want.length, c.n, `generator length for ${JSON.stringify(c.gen)}`);
    const block = Uint8Array.from(Buffer.from(c.block, 'base64'));
    const got = new Uint8Array(c.n);
    lz4DecodeBlock(block, got);
    assert.ok(Buffer.from(got).equals(Buffer.from(want)), `${JSON.stringify(c.gen)} ${c.mode}: bytes differ`);
    // into the middle of a larger buffer: nothing outside the range is touched
    const big = new Uint8Array(c.n + 10).fill(0xaa);
    lz4DecodeBlock(block, big, 5, c.n);
    assert.ok(Buffer.from(big.subarray(5, 5 + c.n)).equals(Buffer.from(want)));
    assert.ok(big.subarray(0, 5).every((b) => b === 0xaa) && big.subarray(5 + c.n).every((b) => b === 0xaa));
    // one byte too many or too few expected: an error, never a partial success
    if (c.n > 1) throwsKind(() => lz4DecodeBlock(block, new Uint8Array(c.n - 1)), 'BadValue');
    throwsKind(() => lz4DecodeBlock(block, new Uint8Array(c.n + 1)), 'BadValue');
  }
});

await test('lz4: hand-made blocks (literals only, overlapping match, long lengths)', () => {
  const dec = (block, n) => {
    const out = new Uint8Array(n);
    lz4DecodeBlock(Uint8Array.from(block), out);
    return out;
  };
  // "abcd": token 0x40, 4 literals
  assert.equal(new TextDecoder().decode(dec([0x40, 97, 98, 99, 100], 4)), 'abcd');
  // "a" then match offset 1 length 4+5=9, then 1 literal "b": "aaaaaaaaaab"
  assert.equal(new TextDecoder().decode(dec([0x15, 97, 1, 0, 0x10, 98], 11)), 'aaaaaaaaaab');
  // "ab", match offset 2 len 4 -> "ababab", end literal "!"
  assert.equal(new TextDecoder().decode(dec([0x20, 97, 98, 2, 0, 0x10, 33], 7)), 'ababab!');
  // 15+255+3 = 273 literals (two extra length bytes)
  const lits = Array.from({ length: 273 }, (_, i) => i & 255);
  assert.deepEqual(Array.from(dec([0xf0, 255, 3, ...lits], 273)), lits);
  // 1 literal, match offset 1 with length 4+15+255+0 = 274, then last literal
  const out = dec([0x1f, 7, 1, 0, 255, 0, 0x10, 9], 276);
  assert.equal(out[0], 7);
  assert.ok(out.subarray(1, 275).every((b) => b === 7));
  assert.equal(out[275], 9);
  // an empty last sequence (token 0) is valid
  assert.deepEqual(Array.from(dec([0x14, 5, 1, 0, 0x00], 9)), [5, 5, 5, 5, 5, 5, 5, 5, 5]);
});

await test('lz4: malformed blocks are errors, and never write out of range', () => {
  const bad = (block, n) => throwsKind(() => lz4DecodeBlock(Uint8Array.from(block), new Uint8Array(n)), 'BadValue');
  bad([], 4); // empty block
  bad([0x40, 97, 98], 4); // literals cut short
  bad([0xf0], 20); // literal length cut short
  bad([0xf0, 255], 300); // ... in its extension bytes
  bad([0x15, 97, 1], 11); // offset cut short
  bad([0x15, 97, 0, 0, 0x10, 98], 11); // offset 0
  bad([0x15, 97, 2, 0, 0x10, 98], 11); // offset before the start of the output
  bad([0x1f, 97, 1, 0], 30); // match length cut short
  bad([0x15, 97, 1, 0], 10); // ends after a match (no last literals)
  bad([0x40, 97, 98, 99, 100], 3); // more output than expected
  bad([0x40, 97, 98, 99, 100], 5); // less output than expected
  bad([0x1f, 7, 1, 0, 255, 255, 255, 0, 0x10, 9], 64); // huge match into a small buffer
  // a malicious match past the end must not touch the bytes after the range
  const dst = new Uint8Array(16).fill(0xee);
  assert.throws(() => lz4DecodeBlock(Uint8Array.from([0x1f, 7, 1, 0, 50, 0x10, 9]), dst, 0, 8));
  assert.ok(dst.subarray(8).every((b) => b === 0xee));
});

// ---- terminal -> site encoding -------------------------------------------------------

await test('encode: the example bytes of PROTOCOL.md', () => {
  assert.equal(toHex(encodeClient({ type: 'Ping', nonce: 5 })), '06 05 00 00 00 00 00 00 00');
  assert.equal(toHex(encodeClient({ type: 'Sleep' })), '04');
  assert.equal(toHex(encodeClient({ type: 'Wake' })), '05');
  assert.equal(
    toHex(encodeClient({ type: 'Input', seq: 1, input: { kind: 'touch', phase: 0, x: 100, y: 200 } })),
    '02 01 00 00 00 00 00 00 00 00 00 64 00 C8 00',
  );
  assert.equal(
    toHex(encodeClient({ type: 'Input', seq: 2, input: { kind: 'key', code: 0, text: 'é' } })),
    '02 02 00 00 00 00 00 00 00 01 00 01 E9 00 00 00',
  );
  assert.equal(
    toHex(encodeClient({ type: 'Hello', version: 1, token: 'ab', resume: null, asleep: false })),
    '01 01 00 02 00 61 62 00 00',
  );
});

await test('encode: Hello with Resume, keys, FrameAck, big numbers', () => {
  const hello = encodeClient({
    type: 'Hello',
    token: 'tök',
    resume: { last_frame_seq: 2 ** 40 + 3, screen_hash: [0x811c9dc5, 0x9e3779b9] },
    asleep: true,
  });
  assert.equal(
    toHex(hello),
    '01 04 00 04 00 74 C3 B6 6B 01 03 00 00 00 00 01 00 00 C5 9D 1C 81 B9 79 37 9E 01 00',
  );
  // Version 3: the display the phone follows, a rotation, a second finger.
  const display = { width: 390, height: 844, density: 300 };
  assert.equal(
    toHex(encodeClient({ type: 'Hello', token: 'ab', resume: null, asleep: false, display })),
    '01 04 00 02 00 61 62 00 00 01 86 01 4C 03 2C 01',
  );
  assert.equal(toHex(encodeClient({ type: 'Display', display })), '07 86 01 4C 03 2C 01');
  assert.equal(
    toHex(encodeClient({ type: 'Input', seq: 4, input: { kind: 'touch', phase: 1, x: 1, y: 2, pointer: 1 } })),
    '02 04 00 00 00 00 00 00 00 02 01 01 00 02 00 01',
  );
  // A version-2 Hello has no display field, even when one is given.
  assert.equal(
    toHex(encodeClient({ type: 'Hello', version: 2, token: 'ab', resume: null, asleep: false, display })),
    '01 02 00 02 00 61 62 00 00',
  );
  assert.equal(
    toHex(encodeClient({ type: 'Input', seq: 300, input: { kind: 'key', code: 8, text: null } })),
    '02 2C 01 00 00 00 00 00 00 01 08 00',
  );
  // a character outside the BMP is one scalar (not two UTF-16 halves)
  assert.equal(
    toHex(encodeClient({ type: 'Input', seq: 1, input: { kind: 'key', code: 0, text: '😀' } })),
    '02 01 00 00 00 00 00 00 00 01 00 01 00 F6 01 00',
  );
  assert.equal(
    toHex(encodeClient({ type: 'Input', seq: 3, input: { kind: 'touch', phase: 2, x: 719, y: 1279 } })),
    '02 03 00 00 00 00 00 00 00 00 02 CF 02 FF 04',
  );
  assert.equal(toHex(encodeClient({ type: 'FrameAck', seq: 258 })), '03 02 01 00 00 00 00 00 00');
  assert.throws(() => encodeClient({ type: 'Hello', token: 'x'.repeat(513), asleep: false }), RangeError);
  assert.doesNotThrow(() => encodeClient({ type: 'Hello', token: 'x'.repeat(512), asleep: false }));
});

// ---- site -> terminal decoding ----------------------------------------------------

await test('decode: the example bytes of PROTOCOL.md', () => {
  const fu = decodeServer(
    hex('82 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 40 00 40 00 00 10 20 30 FF'),
  );
  assert.deepEqual(fu, {
    type: 'FrameUpdate',
    seq: 1,
    tiles: [{ x: 0, y: 0, w: 64, h: 64, kind: 'solid', r: 0x10, g: 0x20, b: 0x30, a: 0xff }],
  });
  assert.deepEqual(decodeServer(hex('87 03 01 00 78')), {
    type: 'Error',
    code: 3,
    codeName: 'BadMessage',
    message: 'x',
  });
});

await test('decode: every site message', () => {
  const welcome = new B().u8(0x81).u16(1).u16(720).u16(1280).u64(41).u8(1).done();
  assert.deepEqual(decodeServer(welcome), {
    type: 'Welcome',
    version: 1,
    width: 720,
    height: 1280,
    last_input_seq: 41,
    resumed: true,
  });
  // also from an ArrayBuffer, as a WebSocket delivers it
  assert.equal(decodeServer(welcome.slice().buffer).width, 720);
  assert.deepEqual(decodeServer(new B().u8(0x83).u64(2 ** 33 + 7).done()), { type: 'InputAck', seq: 2 ** 33 + 7 });
  assert.deepEqual(decodeServer(new B().u8(0x88).u64(12).done()), { type: 'InputDurable', seq: 12 });
  const v2welcome = new B().u8(0x81).u16(2).u16(1).u16(1).u64(0).u8(0).done();
  assert.equal(decodeServer(v2welcome).version, 2);
  assert.deepEqual(
    decodeServer(new B().u8(0x84).str('ann@example.com').str('Lunch? ☕').u64(1764000000123).done()),
    { type: 'Notification', title: 'ann@example.com', body: 'Lunch? ☕', at_ms: 1764000000123 },
  );
  assert.deepEqual(decodeServer(new B().u8(0x85).str('ws://10.0.0.2:8080/v1/terminal').done()), {
    type: 'Redirect',
    url: 'ws://10.0.0.2:8080/v1/terminal',
  });
  assert.deepEqual(decodeServer(new B().u8(0x86).u64(99).done()), { type: 'Pong', nonce: 99 });
  assert.deepEqual(decodeServer(new B().u8(0x89).u16(1688).u16(780).done()), { type: 'Screen', width: 1688, height: 780 });
  assert.deepEqual(decodeServer(new B().u8(0x8a).str('héllo € 日本').done()), { type: 'Clipboard', text: 'héllo € 日本' });
  for (const [code, name] of [[1, 'Unauthorized'], [2, 'Version'], [4, 'NotHere'], [5, 'PhoneDown'], [6, 'Internal']]) {
    assert.equal(decodeServer(new B().u8(0x87).u8(code).str('').done()).codeName, name);
  }
  const raw = Uint8Array.from({ length: 2 * 3 * 4 }, (_, i) => i);
  const lz4 = Uint8Array.from([0x40, 1, 2, 3, 4]);
  const fu = decodeServer(
    new B()
      .u8(0x82).u64(7).u32(3)
      .u16(64).u16(128).u16(2).u16(3).u8(2).u32(raw.length).raw(raw)
      .u16(0).u16(0).u16(1).u16(1).u8(1).u32(lz4.length).raw(lz4)
      .u16(5).u16(6).u16(7).u16(8).u8(0).raw([1, 2, 3, 4])
      .done(),
  );
  assert.equal(fu.seq, 7);
  assert.equal(fu.tiles.length, 3);
  assert.deepEqual(Array.from(fu.tiles[0].data), Array.from(raw));
  assert.equal(fu.tiles[0].kind, 'raw');
  assert.equal(fu.tiles[1].kind, 'lz4');
  assert.deepEqual(Array.from(fu.tiles[1].data), Array.from(lz4));
  assert.deepEqual(fu.tiles[2], { x: 5, y: 6, w: 7, h: 8, kind: 'solid', r: 1, g: 2, b: 3, a: 4 });
  // an update with no tile (the answer to Wake when nothing changed)
  assert.deepEqual(decodeServer(new B().u8(0x82).u64(3).u32(0).done()), { type: 'FrameUpdate', seq: 3, tiles: [] });
});

await test('decode: errors of PROTOCOL.md', () => {
  throwsKind(() => decodeServer(new Uint8Array(0)), 'Empty');
  throwsKind(() => decodeServer(Uint8Array.of(0x01)), 'UnknownType'); // a client tag
  throwsKind(() => decodeServer(Uint8Array.of(0x8d)), 'UnknownType');
  throwsKind(() => decodeServer(new Uint8Array(16 * 1024 * 1024 + 1)), 'TooLarge');
  throwsKind(() => decodeServer(hex('86 01 00 00')), 'Truncated');
  throwsKind(() => decodeServer(hex('86 01 00 00 00 00 00 00 00 00')), 'TrailingBytes');
  throwsKind(() => decodeServer(new B().u8(0x81).u16(5).done()), 'UnsupportedVersion');
  throwsKind(() => decodeServer(new B().u8(0x81).u16(1).u16(720).u16(1280).u64(0).u8(2).done()), 'BadValue');
  throwsKind(() => decodeServer(new B().u8(0x87).u8(0).str('').done()), 'BadValue');
  throwsKind(() => decodeServer(new B().u8(0x87).u8(7).str('').done()), 'BadValue');
  throwsKind(() => decodeServer(new B().u8(0x85).u16(3).raw([0x61, 0xff, 0x62]).done()), 'BadUtf8');
  throwsKind(() => decodeServer(new B().u8(0x85).str('x'.repeat(4097)).done()), 'TooLarge');
  assert.doesNotThrow(() => decodeServer(new B().u8(0x85).str('x'.repeat(4096)).done()));
  throwsKind(() => decodeServer(new B().u8(0x85).u16(10).raw([1, 2]).done()), 'Truncated');
  const fu = () => new B().u8(0x82).u64(1);
  throwsKind(() => decodeServer(fu().u32(65537).done()), 'TooLarge');
  throwsKind(() => decodeServer(fu().u32(2).u16(0).u16(0).u16(1).u16(1).u8(0).raw([1, 2, 3, 4]).done()), 'Truncated');
  throwsKind(() => decodeServer(fu().u32(1).u16(0).u16(0).u16(0).u16(1).u8(0).raw([1, 2, 3, 4]).done()), 'BadValue');
  throwsKind(() => decodeServer(fu().u32(1).u16(0).u16(0).u16(1).u16(4097).u8(0).raw([1, 2, 3, 4]).done()), 'TooLarge');
  throwsKind(() => decodeServer(fu().u32(1).u16(0).u16(0).u16(1).u16(1).u8(4).raw([1, 2, 3, 4]).done()), 'BadValue');
  throwsKind(() => decodeServer(fu().u32(1).u16(0).u16(0).u16(1).u16(1).u8(2).u32(3).raw([1, 2, 3]).done()), 'BadValue');
  throwsKind(() => decodeServer(fu().u32(1).u16(0).u16(0).u16(1).u16(2).u8(2).u32(8).raw([1, 2, 3]).done()), 'Truncated');
  // Lz4 length limit: n + n/255 + 16 with n = 4 -> 20
  const lz = (len) => fu().u32(1).u16(0).u16(0).u16(1).u16(1).u8(1).u32(len).raw(new Uint8Array(len)).done();
  assert.doesNotThrow(() => decodeServer(lz(20)));
  throwsKind(() => decodeServer(lz(21)), 'TooLarge');
});

// ---- applying updates --------------------------------------------------------------

await test('screen: Solid, Raw and Lz4 tiles land where they should', () => {
  const s = new Screen(8, 4);
  const raw = Uint8Array.from({ length: 2 * 2 * 4 }, (_, i) => 100 + i);
  const lzData = gen({ kind: 'seq', n: 3 * 2 * 4 });
  // LZ4 of 24 bytes of 0..23: all literals
  const lzBlock = Uint8Array.from([0xf0, 24 - 15, ...lzData]);
  const rects = s.apply([
    { x: 0, y: 0, w: 8, h: 4, kind: 'solid', r: 1, g: 2, b: 3, a: 255 },
    { x: 6, y: 2, w: 2, h: 2, kind: 'raw', data: raw },
    { x: 1, y: 1, w: 3, h: 2, kind: 'lz4', data: lzBlock },
  ]);
  assert.equal(rects.length, 3);
  const px = (x, y) => Array.from(s.rgba.subarray((y * 8 + x) * 4, (y * 8 + x) * 4 + 4));
  assert.deepEqual(px(0, 0), [1, 2, 3, 255]);
  assert.deepEqual(px(5, 3), [1, 2, 3, 255]);
  assert.deepEqual(px(6, 2), [100, 101, 102, 103]);
  assert.deepEqual(px(7, 2), [104, 105, 106, 107]);
  assert.deepEqual(px(6, 3), [108, 109, 110, 111]);
  assert.deepEqual(px(7, 3), [112, 113, 114, 115]);
  assert.deepEqual(px(1, 1), [0, 1, 2, 3]);
  assert.deepEqual(px(3, 1), [8, 9, 10, 11]);
  assert.deepEqual(px(1, 2), [12, 13, 14, 15]);
  assert.deepEqual(px(3, 2), [20, 21, 22, 23]);
  assert.deepEqual(px(4, 1), [1, 2, 3, 255]);
  // the hash is over exactly these bytes
  assert.deepEqual(s.hash(), screenHashParts(s.rgba.slice()));
});

await test('screen: full-width Lz4 tiles decode in place; a full 720x1280 update', () => {
  const W = 720;
  const H = 1280;
  const s = new Screen(W, H);
  const tiles = [];
  const want = new Uint8Array(W * H * 4);
  const solid = [9, 8, 7, 255];
  for (let ty = 0; ty < H; ty += 64) {
    for (let tx = 0; tx < W; tx += 64) {
      const w = Math.min(64, W - tx);
      const h = Math.min(64, H - ty);
      for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) want.set(solid, ((ty + r) * W + tx + c) * 4);
      tiles.push({ x: tx, y: ty, w, h, kind: 'solid', r: 9, g: 8, b: 7, a: 255 });
    }
  }
  assert.equal(tiles.length, 12 * 20);
  s.apply(tiles);
  // a full-width band from the fixtures: tile 720x16 (rows 100..115)
  const c = fixtures.cases.find((k) => k.gen.kind === 'tile' && k.gen.w === 720);
  const band = gen(c.gen);
  want.set(band, 100 * W * 4);
  s.apply([{ x: 0, y: 100, w: 720, h: 16, kind: 'lz4', data: Uint8Array.from(Buffer.from(c.block, 'base64')) }]);
  assert.ok(Buffer.from(s.rgba).equals(Buffer.from(want)));
  assert.deepEqual(s.hash(), screenHashParts(want));
});

await test('screen: a tile off the screen paints nothing; a bad Lz4 tile is an error', () => {
  const s = new Screen(4, 4);
  throwsKind(
    () =>
      s.apply([
        { x: 0, y: 0, w: 4, h: 4, kind: 'solid', r: 5, g: 5, b: 5, a: 5 },
        { x: 3, y: 0, w: 2, h: 1, kind: 'solid', r: 1, g: 1, b: 1, a: 1 },
      ]),
    'BadValue',
  );
  assert.ok(s.rgba.every((b) => b === 0), 'nothing painted');
  throwsKind(() => s.apply([{ x: 0, y: 0, w: 1, h: 1, kind: 'lz4', data: Uint8Array.from([0x30, 1, 2, 3]) }]), 'BadValue');
});

await test('codec: the handoff messages of version 4 (Prepare, Joined; Join, Prepared)', () => {
  const prepare = new B().u8(0x8b).str('wss://b.example/v1/terminal').str('t1c').done();
  assert.deepEqual(decodeServer(prepare), { type: 'Prepare', url: 'wss://b.example/v1/terminal', ticket: 't1c' });
  assert.deepEqual(decodeServer(Uint8Array.from([0x8c])), { type: 'Joined' });
  throwsKind(() => decodeServer(Uint8Array.from([0x8c, 0])), 'TrailingBytes');
  assert.equal(toHex(encodeClient({ type: 'Join', token: 'ab', ticket: 'c' })), '08 04 00 02 00 61 62 01 00 63');
  assert.equal(toHex(encodeClient({ type: 'Prepared' })), '09');
});

await test('screen: copy tiles (version 4) move rows both ways, overlapping; a source off the screen is an error', () => {
  const W = 8;
  const H = 6;
  const pixels = Uint8Array.from({ length: W * H * 4 }, (_, i) => (i >> 2) & 255);
  // a FrameUpdate: the screen from raw bytes, then one copy (encoding 3, source x and y)
  for (const [sx, sy, dx, dy, w] of [[2, 0, 1, 2, 6], [2, 2, 1, 0, 6], [0, 1, 0, 3, 8], [0, 3, 0, 0, 8]]) {
    const m = new B().u8(0x82).u64(5).u32(2);
    m.u16(0).u16(0).u16(W).u16(H).u8(2).u32(pixels.length).raw(pixels);
    m.u16(dx).u16(dy).u16(w).u16(3).u8(3).u16(sx).u16(sy);
    const msg = decodeServer(m.done());
    assert.deepEqual(msg.tiles[1], { x: dx, y: dy, w, h: 3, kind: 'copy', sx, sy });
    const s = new Screen(W, H);
    s.apply(msg.tiles);
    const want = pixels.slice();
    for (let r = 0; r < 3; r++) {
      const from = ((sy + r) * W + sx) * 4;
      want.set(pixels.subarray(from, from + w * 4), ((dy + r) * W + dx) * 4);
    }
    assert.ok(Buffer.from(s.rgba).equals(Buffer.from(want)), `copy from (${sx},${sy}) to (${dx},${dy})`);
  }
  const s = new Screen(W, H);
  throwsKind(() => s.apply([{ x: 0, y: 0, w: 4, h: 2, kind: 'copy', sx: 5, sy: 0 }]), 'BadValue');
  throwsKind(() => s.apply([{ x: 0, y: 0, w: 4, h: 2, kind: 'copy', sx: 0, sy: 5 }]), 'BadValue');
  const bad = new B().u8(0x82).u64(1).u32(1).u16(0).u16(0).u16(1).u16(1).u8(4).u32(0).done();
  throwsKind(() => decodeServer(bad), 'BadValue');
});

await test('screen: decode + apply of a whole FrameUpdate message', () => {
  const c = fixtures.cases.find((k) => k.gen.kind === 'tile' && k.gen.w === 64 && k.mode === 'default');
  const block = Buffer.from(c.block, 'base64');
  const msg = new B()
    .u8(0x82).u64(1).u32(2)
    .u16(0).u16(0).u16(64).u16(64).u8(1).u32(block.length).raw(block)
    .u16(64).u16(0).u16(16).u16(64).u8(0).raw([255, 0, 0, 255])
    .done();
  const s = new Screen(80, 64);
  s.apply(decodeServer(msg).tiles);
  const tile = gen(c.gen);
  for (let y = 0; y < 64; y++) {
    assert.ok(Buffer.from(s.rgba.subarray(y * 80 * 4, y * 80 * 4 + 256)).equals(Buffer.from(tile.subarray(y * 256, y * 256 + 256))));
    assert.deepEqual(Array.from(s.rgba.subarray((y * 80 + 79) * 4, (y * 80 + 80) * 4)), [255, 0, 0, 255]);
  }
});

await test('a session encoded by the Rust reference crate decodes to the same screen hash', () => {
  // fixtures/rust-session.bin: made by fixtures/make_rust_session.rs (vmi-protocol's
  // encode_server and display::Encoder, LZ4 by lz4_flex)
  const data = readFileSync(join(here, 'fixtures', 'rust-session.bin'));
  const msgs = [];
  for (let p = 0; p < data.length; ) {
    const n = data.readUInt32LE(p);
    msgs.push(decodeServer(new Uint8Array(data.buffer, data.byteOffset + p + 4, n)));
    p += 4 + n;
  }
  assert.deepEqual(msgs.map((m) => m.type), [
    'Welcome', 'FrameUpdate', 'FrameUpdate', 'InputAck', 'Notification', 'Redirect', 'Pong', 'Error',
  ]);
  const [welcome] = msgs;
  assert.deepEqual(welcome, { type: 'Welcome', version: 1, width: 200, height: 150, last_input_seq: 7, resumed: false });
  const s = new Screen(welcome.width, welcome.height);
  const kinds = new Set();
  for (const m of msgs.filter((k) => k.type === 'FrameUpdate')) {
    for (const t of m.tiles) kinds.add(t.kind);
    s.apply(m.tiles);
  }
  assert.deepEqual([...kinds].sort(), ['lz4', 'solid']);
  assert.equal(msgs[1].tiles.length, 4 * 3, 'a full update of a 200x150 screen is 4x3 grid tiles');
  assert.equal(hashHex(s.hash()), '9c11ba3d4696602d');
  assert.deepEqual(msgs[4], { type: 'Notification', title: 'ann@example.com', body: 'Lunch? ☕', at_ms: 1764000000123 });
  assert.equal(msgs[5].url, 'ws://127.0.0.1:7802/v1/terminal');
  assert.equal(msgs[6].nonce, 42);
  assert.equal(msgs[7].codeName, 'NotHere');
});

// ---- inputs kept for a resend, the map's arithmetic ------------------------------------

await test('kept inputs: acks forget, Welcome keeps the unapplied for a resend in order', () => {
  const k = new KeptInputs(null);
  const a = k.add({ kind: 'key', code: 0, text: 'a' });
  const b = k.add({ kind: 'key', code: 0, text: 'b' });
  const c = k.add({ kind: 'key', code: 0, text: 'c' });
  assert.deepEqual([a, b, c], [1, 2, 3]);
  k.acked(1);
  assert.deepEqual(k.list.map((x) => x.seq), [2, 3]);
  // the site applied up to 2 before the connection broke: only 3 is resent, under its number
  assert.deepEqual(k.welcomed(2).map((x) => [x.seq, x.input.text]), [[3, 'c']]);
  assert.equal(k.add({ kind: 'key', code: 0, text: 'd' }), 4);
  // nothing kept: the next number follows the site's
  k.acked(4);
  assert.equal(k.welcomed(10).length, 0);
  assert.equal(k.add({ kind: 'key', code: 2, text: null }), 11);
  // version 2: applied inputs stay until durable; after a failover the new site has fewer applied
  const v2 = new KeptInputs(null);
  for (const t of ['a', 'b', 'c']) v2.add({ kind: 'key', code: 0, text: t });
  assert.deepEqual(v2.welcomed(3, true).map((x) => x.seq), [], 'all applied: nothing to resend');
  assert.equal(v2.length, 3, 'but kept until durable');
  assert.deepEqual(v2.welcomed(1, true).map((x) => x.seq), [2, 3], 'the failed-over phone lacks 2 and 3');
  v2.acked(3);
  assert.equal(v2.length, 0);
  assert.equal(v2.add({ kind: 'key', code: 0, text: 'd' }), 4);
  // a saved session resumes its numbers; at most MAX_KEPT_INPUTS are kept, the oldest go
  const saved = new KeptInputs({ kept: [{ seq: 7, input: { kind: 'key', code: 1, text: null } }], nextSeq: 8 });
  assert.equal(saved.length, 1);
  for (let i = 0; i < MAX_KEPT_INPUTS; i++) saved.add({ kind: 'touch', phase: 1, x: i, y: 0 });
  assert.equal(saved.length, MAX_KEPT_INPUTS);
  assert.equal(saved.list[0].seq, 8, 'the saved one (7) went first');
  assert.equal(saved.list[saved.length - 1].seq, 8 + MAX_KEPT_INPUTS - 1);
});

await test('map: the projection maps places to pixels and back; moves count where they went', () => {
  const sites = [
    { lat: 52.37, lon: 4.9 },
    { lat: 48.86, lon: 2.35 },
  ];
  const p = mapProjection(sites, 400, 300);
  for (const s of sites) {
    const x = p.x(s.lon);
    const y = p.y(s.lat);
    assert.ok(x > 0 && x < 400 && y > 0 && y < 300, `${x},${y} inside`);
    assert.ok(Math.abs(p.lon(x) - s.lon) < 1e-9 && Math.abs(p.lat(y) - s.lat) < 1e-9);
  }
  assert.ok(p.y(52.37) < p.y(48.86), 'north is up');
  const before = [
    { id: 'a', phones: 1, last_heartbeat_ms: 100 },
    { id: 'b', phones: 0, last_heartbeat_ms: 100 },
    { id: 'c', phones: 5, last_heartbeat_ms: 100 },
  ];
  const moved = { outcome: 'committed', from: 'a', to: 'b', at_ms: 200 };
  assert.deepEqual(countMove(before, moved).map((s) => s.phones), [0, 1, 5]);
  // heartbeats after the move already count it; an aborted move moves nothing
  assert.deepEqual(countMove(before.map((s) => ({ ...s, last_heartbeat_ms: 300 })), moved).map((s) => s.phones), [1, 0, 5]);
  assert.equal(countMove(before, { ...moved, outcome: 'aborted' }), before);
  assert.equal(countMove(before, null), before);
});

await test('checkpoint times: seconds, one time zone, one count word', () => {
  // Two checkpoints 20 s apart read differently, with seconds, on a 24-hour clock; a label's UTC time reads in
  // the user's zone (whatever this machine's is).
  const at = Date.UTC(2026, 11, 5, 20, 32, 10);
  assert.notEqual(when(at, at).text, when(at + 20000, at).text);
  const local = new Date(at);
  const hms = [local.getHours(), local.getMinutes(), local.getSeconds()].map((n) => String(n).padStart(2, '0'));
  assert.ok(when(at, at).text.includes(hms.join(':')), `${when(at, at).text} has ${hms.join(':')}`);
  assert.equal(when(at, at + 30 * 60000).ago, '30 min ago');
  const label = localLabel('before restoring to 2026-12-05 20:32 UTC');
  assert.ok(!label.includes('UTC') && label.startsWith('before restoring to '), label);
  assert.ok(label.includes(`${hms[0]}:${hms[1]}`), `${label} has ${hms[0]}:${hms[1]}`);
  assert.equal(localLabel('hourly'), 'hourly');
  assert.equal(countOf(1, 'checkpoint', 'checkpoints'), '1 checkpoint');
  assert.equal(countOf(3, 'checkpoint', 'checkpoints'), '3 checkpoints');
});

await test('follow-me hint: the placer’s margin and dwell, a countdown only while the page reports', () => {
  const sites = [
    { id: 'a', healthy: true, draining: false },
    { id: 'b', healthy: true, draining: false },
    { id: 'c', healthy: false, draining: false },
  ];
  const rules = { min_gain_ms: 2, min_gain_ratio: 0.2, dwell_ms: 10000, report_max_age_ms: 60000 };
  const at = (now, closer, more) => followHint({ sites, rtts: [40, 12, 1], home: 'a', rules, reporting: true, closer, now, ...more });
  // b is closer by the margin (c is faster but down): the phone moves there after the dwell, counted down
  let h = at(1000, null);
  assert.equal(h.best, 'b');
  assert.ok(h.text.includes('(12 ms, against 40 ms)') && h.text.includes('in about 10 s'), h.text);
  h = at(7500, h.closer);
  assert.equal(h.closer.since, 1000);
  assert.ok(h.text.includes('in about 4 s'), h.text);
  assert.ok(at(11000, h.closer).text.includes('moving there now'));
  // not reporting: no promise the placer could not keep; the placer off: said so
  assert.ok(at(1000, null, { reporting: false }).text.includes('drag the blue dot'));
  assert.ok(at(1000, null, { rules: null }).text.includes('the placer is off'));
  // within the margin (38 against 40 ms): no move, and no countdown left over
  h = followHint({ sites, rtts: [40, 38, null], home: 'a', rules, reporting: true, closer: { site: 'b', since: 0 }, now: 5 });
  assert.equal(h.best, null);
  assert.equal(h.closer, null);
  assert.ok(h.text.includes('stays on a'), h.text);
  assert.equal(followHint({ sites, rtts: [5, 9, null], home: 'a', rules, reporting: true, closer: null, now: 0 }).text,
    'Your phone runs on the closest site.');
});

await test('round trips: a site that stops answering shows no figure, and one indicator level', () => {
  const trips = new RoundTrips();
  trips.freshSince = 0;
  trips.probes.set('a', [{ ms: 12, at: 1 }, { ms: 9, at: 2 }]);
  assert.equal(trips.rttOf('a', false), 9);
  trips.probes.get('a').push({ ms: null, at: 3 });
  assert.equal(trips.silent('a'), true);
  assert.equal(trips.rttOf('a', false), null, 'no old figure for a site that does not answer');
  assert.deepEqual([null, 20, 100, 400].map(qualityLevel), ['unknown', 'good', 'fair', 'poor']);
});

console.log(`unit: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
