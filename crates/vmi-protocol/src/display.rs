//! The display model: the site's tile [`Encoder`] and the terminal's [`Screen`].
//!
//! The phone's screen is `width × height` RGBA8 pixels (bytes R, G, B, A; rows top to
//! bottom; no padding). The site cuts it into a grid of [`TILE`]×[`TILE`] tiles (narrower
//! or shorter on the right and bottom edges) and keeps a copy of what it last sent. For a
//! damaged region it compares each grid tile with that copy and sends only the rows of the
//! tiles that really changed, so a repaint of identical pixels costs nothing. The terminal
//! applies the tiles to its [`Screen`]. Both start from all-zero bytes, and both can compute
//! the [`screen_hash`] that lets a reconnecting terminal prove its screen is current.
//!
//! A changed tile is sent as [`TileData::Solid`] when all its pixels are equal, else as
//! [`TileData::Lz4`] when that is smaller than raw, else as [`TileData::Raw`]. That choice
//! was measured on screenshots of the phone (`examples/codec_measure.rs`; figures in
//! docs/PROTOCOL.md).
//!
//! Scrolling repaints most of a region with pixels the terminal already has, a few rows
//! higher or lower. For a terminal that reads copies (protocol version 4) the encoder finds
//! that shift itself, from the pixels (see [`Encoder::encode`]): no engine or guest has to
//! report it, so it works for any app and survives damage coalesced over several frames. It
//! sends one [`TileData::Copy`] that moves the region on the terminal, then the tiles of
//! the strip the scroll uncovered.

use std::collections::HashMap;

use lz4_flex::block;

use crate::error::ProtocolError;
use crate::message::{Tile, TileData};

/// Side of the site's tile grid, in pixels.
pub const TILE: usize = 64;

/// Largest LZ4 output for one grid tile.
const PACKED_CAP: usize = block::get_maximum_output_size(TILE * TILE * 4);

/// A damaged region is searched for a scroll only when it is at least this tall and wide:
/// smaller ones cost little as tiles.
const SCROLL_MIN_SIDE: usize = TILE;
/// A copy is sent only when it spares at least this many rows that changed.
const COPY_MIN_ROWS: usize = 16;
/// Rows that only one shift explains must agree this often before the shift is tried.
const SCROLL_MIN_VOTES: u32 = 8;

/// A damaged rectangle of the screen, in pixels (the engine's type: one home for both).
pub use vmi_engine::Rect;

/// A copy of RGBA pixels with every alpha byte 255: the screen is opaque (docs/PROTOCOL.md,
/// "Display model"), whatever alpha the guest wrote. For pictures of the screen (PNG).
pub fn opaque(rgba: &[u8]) -> Vec<u8> {
    let mut out = rgba.to_vec();
    out.iter_mut().skip(3).step_by(4).for_each(|a| *a = 255);
    out
}

/// The site side: turns the phone's framebuffer into the tiles a terminal is missing.
///
/// One encoder per terminal session. It owns a copy of the screen as last sent, so damage
/// may be coalesced freely: pass every rectangle damaged since the last update (or just
/// one that covers them all) and only tiles whose pixels differ from the copy are sent.
#[derive(Clone, Debug)]
pub struct Encoder {
    width: usize,
    height: usize,
    cols: usize,
    rows: usize,
    /// The screen as the terminal has it once it applies everything sent.
    sent: Vec<u8>,
    /// Grid tiles touched by the damage of the current call.
    dirty: Vec<bool>,
    /// One tile's pixels, gathered row after row.
    pixels: Vec<u8>,
    /// LZ4 output for one tile.
    packed: Vec<u8>,
    /// Whether the terminal applies [`TileData::Copy`] (protocol version 4).
    copies: bool,
    /// Row hashes of a damaged region, in the new frame and in the copy (scroll search).
    rows_new: Vec<u64>,
    rows_old: Vec<u64>,
}

impl Encoder {
    /// An encoder for a `width` × `height` screen, whose copy starts all zero like a new
    /// terminal's [`Screen`].
    pub fn new(width: u16, height: u16) -> Encoder {
        let (width, height) = (usize::from(width), usize::from(height));
        let (cols, rows) = (width.div_ceil(TILE), height.div_ceil(TILE));
        Encoder {
            width,
            height,
            cols,
            rows,
            sent: vec![0; width * height * 4],
            dirty: vec![false; cols * rows],
            pixels: Vec::with_capacity(TILE * TILE * 4),
            packed: vec![0; PACKED_CAP],
            copies: false,
            rows_new: Vec::new(),
            rows_old: Vec::new(),
        }
    }

    /// The same encoder, sending a scroll as a [`TileData::Copy`] when `copies` (the terminal
    /// speaks protocol version 4 or later).
    pub fn with_copies(mut self, copies: bool) -> Encoder {
        self.copies = copies;
        self
    }

    /// Screen width in pixels.
    pub fn width(&self) -> u16 {
        self.width as u16
    }

    /// Screen height in pixels.
    pub fn height(&self) -> u16 {
        self.height as u16
    }

    /// The tiles inside `damage` whose pixels in `rgba` differ from what was last sent; the
    /// copy is updated to match. Empty when nothing changed.
    ///
    /// With copies on, each damaged region of at least [`TILE`]×[`TILE`] pixels is first
    /// searched for a vertical scroll: rows of the new frame that occur exactly once in the
    /// copy vote for the shift that brings them there, the shift with most votes is checked
    /// byte for byte, and its longest run of matching rows is sent as one [`TileData::Copy`]
    /// (first, since it reads the screen as it was). The grid tiles follow in row-major
    /// order, each cut to its rows that still differ.
    ///
    /// # Panics
    ///
    /// When `rgba` is not `width * height * 4` bytes.
    pub fn encode(&mut self, rgba: &[u8], damage: &[Rect]) -> Vec<Tile> {
        self.check_len(rgba);
        self.dirty.fill(false);
        let mut tiles = Vec::new();
        for r in damage {
            let x0 = (r.x as usize).min(self.width);
            let y0 = (r.y as usize).min(self.height);
            let x1 = (r.x.saturating_add(r.w) as usize).min(self.width);
            let y1 = (r.y.saturating_add(r.h) as usize).min(self.height);
            if x0 >= x1 || y0 >= y1 {
                continue;
            }
            if self.copies
                && x1 - x0 >= SCROLL_MIN_SIDE
                && y1 - y0 >= SCROLL_MIN_SIDE
                && let Some(copy) = self.scroll(rgba, x0..x1, y0..y1)
            {
                tiles.push(copy);
            }
            for ty in y0 / TILE..=(y1 - 1) / TILE {
                self.dirty[ty * self.cols + x0 / TILE..=ty * self.cols + (x1 - 1) / TILE].fill(true);
            }
        }
        for index in 0..self.dirty.len() {
            if self.dirty[index]
                && let Some(tile) = self.tile(rgba, index % self.cols, index / self.cols, false)
            {
                tiles.push(tile);
            }
        }
        tiles
    }

    /// The copy that moves the region `xs` × `ys` of the sent screen towards `rgba`, if the
    /// region scrolled; the sent copy is moved to match.
    fn scroll(&mut self, rgba: &[u8], xs: std::ops::Range<usize>, ys: std::ops::Range<usize>) -> Option<Tile> {
        let stride = self.width * 4;
        let span = |y: usize| y * stride + xs.start * 4..y * stride + xs.end * 4;
        self.rows_new.clear();
        self.rows_old.clear();
        for y in ys.clone() {
            self.rows_new.push(row_hash(&rgba[span(y)]));
            self.rows_old.push(row_hash(&self.sent[span(y)]));
        }
        let (new, old) = (&self.rows_new, &self.rows_old);
        let changed = new.iter().zip(old).filter(|(a, b)| a != b).count();
        if changed < COPY_MIN_ROWS {
            return None;
        }
        // Rows that occur once in the copy say where they came from; blank or repeated rows
        // (backgrounds, rules) say nothing.
        let mut once: HashMap<u64, Option<usize>> = HashMap::with_capacity(old.len());
        for (i, h) in old.iter().enumerate() {
            once.entry(*h).and_modify(|seen| *seen = None).or_insert(Some(i));
        }
        let mut votes: HashMap<isize, u32> = HashMap::new();
        for (i, h) in new.iter().enumerate() {
            if *h != old[i]
                && let Some(Some(j)) = once.get(h)
            {
                *votes.entry(*j as isize - i as isize).or_default() += 1;
            }
        }
        let (shift, count) = votes.into_iter().max_by_key(|&(shift, count)| (count, std::cmp::Reverse(shift.abs())))?;
        if count < SCROLL_MIN_VOTES || shift == 0 {
            return None;
        }
        // The longest run of rows (destination i takes source i + shift) equal byte for byte.
        let h = new.len() as isize;
        let (lo, hi) = ((-shift).max(0), (h - shift).min(h));
        let (mut best, mut run_start, mut gain, mut best_gain) = ((0, 0), lo, 0, 0);
        for i in lo..=hi {
            let same = i < hi && {
                let (d, s) = (i as usize, (i + shift) as usize);
                new[d] == old[s] && rgba[span(ys.start + d)] == self.sent[span(ys.start + s)]
            };
            if same {
                gain += usize::from(new[i as usize] != old[i as usize]);
                continue;
            }
            if i - run_start > best.1 - best.0 {
                best = (run_start, i);
                best_gain = gain;
            }
            run_start = i + 1;
            gain = 0;
        }
        if best_gain < COPY_MIN_ROWS {
            return None;
        }
        let (dst, src) = (ys.start + best.0 as usize, (ys.start as isize + best.0 + shift) as usize);
        let rows = (best.1 - best.0) as usize;
        // Rows move one at a time in the order that reads each source before it is written.
        let order: Box<dyn Iterator<Item = usize>> =
            if src > dst { Box::new(0..rows) } else { Box::new((0..rows).rev()) };
        for r in order {
            let from = span(src + r);
            self.sent.copy_within(from, (dst + r) * stride + xs.start * 4);
        }
        Some(Tile {
            x: xs.start as u16,
            y: dst as u16,
            w: xs.len() as u16,
            h: rows as u16,
            data: TileData::Copy { src_x: xs.start as u16, src_y: src as u16 },
        })
    }

    /// Every tile of the screen, changed or not: the first update for a terminal whose
    /// screen is new or stale. The copy is updated to match.
    ///
    /// # Panics
    ///
    /// When `rgba` is not `width * height * 4` bytes.
    pub fn full(&mut self, rgba: &[u8]) -> Vec<Tile> {
        self.check_len(rgba);
        let mut tiles = Vec::with_capacity(self.cols * self.rows);
        for ty in 0..self.rows {
            for tx in 0..self.cols {
                tiles.extend(self.tile(rgba, tx, ty, true));
            }
        }
        tiles
    }

    /// Records that the terminal already shows `rgba` (its resume hash matched), so later
    /// updates send only what differs from it.
    ///
    /// # Panics
    ///
    /// When `rgba` is not `width * height * 4` bytes.
    pub fn assume_sent(&mut self, rgba: &[u8]) {
        self.check_len(rgba);
        self.sent.copy_from_slice(rgba);
    }

    /// The screen as the terminal has it once it applies everything sent so far.
    pub fn sent(&self) -> &[u8] {
        &self.sent
    }

    /// [`screen_hash`] of [`Encoder::sent`].
    pub fn hash(&self) -> u64 {
        screen_hash(&self.sent)
    }

    fn check_len(&self, rgba: &[u8]) {
        assert_eq!(rgba.len(), self.sent.len(), "framebuffer is not {}x{} RGBA8", self.width, self.height);
    }

    /// Grid tile (`tx`, `ty`) whole if `force`, else its rows from the first to the last
    /// that changed (none: `None`).
    fn tile(&mut self, rgba: &[u8], tx: usize, ty: usize, force: bool) -> Option<Tile> {
        let (x, y) = (tx * TILE, ty * TILE);
        let (w, h) = (TILE.min(self.width - x), TILE.min(self.height - y));
        let stride = self.width * 4;
        let row_len = w * 4;
        let row = |r: usize| (y + r) * stride + x * 4..(y + r) * stride + x * 4 + row_len;
        let differs = |r: &usize| rgba[row(*r)] != self.sent[row(*r)];
        let (first, last) = match (0..h).find(differs).zip((0..h).rev().find(differs)) {
            _ if force => (0, h - 1),
            Some(changed) => changed,
            None => return None,
        };
        self.pixels.clear();
        for r in first..=last {
            let src = &rgba[row(r)];
            self.pixels.extend_from_slice(src);
            self.sent[row(r)].copy_from_slice(src);
        }
        let rows = last + 1 - first;
        Some(Tile { x: x as u16, y: (y + first) as u16, w: w as u16, h: rows as u16, data: self.pack(row_len) })
    }

    /// Solid when every pixel is equal, else LZ4 when smaller than raw, else raw.
    fn pack(&mut self, row_len: usize) -> TileData {
        let px = &self.pixels;
        let first_row = &px[..row_len];
        let pixel = [px[0], px[1], px[2], px[3]];
        if first_row.chunks_exact(4).all(|p| p == pixel) && px.chunks_exact(row_len).all(|r| r == first_row) {
            return TileData::Solid(u32::from_le_bytes(pixel));
        }
        match block::compress_into(px, &mut self.packed) {
            Ok(n) if n < px.len() => TileData::Lz4(self.packed[..n].to_vec()),
            _ => TileData::Raw(px.clone()),
        }
    }
}

/// The terminal side: a framebuffer that frame updates are applied to.
#[derive(Clone, Debug)]
pub struct Screen {
    width: usize,
    height: usize,
    rgba: Vec<u8>,
    /// One decompressed LZ4 tile.
    scratch: Vec<u8>,
}

impl Screen {
    /// A `width` × `height` screen of all-zero bytes (from [`crate::ServerMessage::Welcome`]).
    pub fn new(width: u16, height: u16) -> Screen {
        let (width, height) = (usize::from(width), usize::from(height));
        Screen { width, height, rgba: vec![0; width * height * 4], scratch: Vec::new() }
    }

    /// Screen width in pixels.
    pub fn width(&self) -> u16 {
        self.width as u16
    }

    /// Screen height in pixels.
    pub fn height(&self) -> u16 {
        self.height as u16
    }

    /// Paints `tiles` in order (a copy reads the pixels as the tiles before it left them).
    ///
    /// Every tile's rectangle and size are checked first (a zero-size or off-screen tile,
    /// or raw data that is not `w*h*4` bytes, is [`ProtocolError::BadValue`]) and nothing
    /// is painted if one is wrong. LZ4 data that does not decompress to exactly `w*h*4`
    /// bytes is [`ProtocolError::BadLz4`]; tiles before it stay painted (the session ends
    /// on any error, and the screen hash tells the site on resume).
    pub fn apply(&mut self, tiles: &[Tile]) -> Result<(), ProtocolError> {
        for t in tiles {
            let (x, y, w, h) = (usize::from(t.x), usize::from(t.y), usize::from(t.w), usize::from(t.h));
            if w == 0 {
                return Err(ProtocolError::BadValue { what: "tile width", value: 0 });
            }
            if h == 0 {
                return Err(ProtocolError::BadValue { what: "tile height", value: 0 });
            }
            if x + w > self.width {
                return Err(ProtocolError::BadValue { what: "tile right edge", value: (x + w) as u64 });
            }
            if y + h > self.height {
                return Err(ProtocolError::BadValue { what: "tile bottom edge", value: (y + h) as u64 });
            }
            if let TileData::Raw(bytes) = &t.data
                && bytes.len() != w * h * 4
            {
                return Err(ProtocolError::BadValue { what: "raw tile length", value: bytes.len() as u64 });
            }
            if let TileData::Copy { src_x, src_y } = t.data {
                let (sx, sy) = (usize::from(src_x), usize::from(src_y));
                if sx + w > self.width {
                    return Err(ProtocolError::BadValue { what: "copy source right edge", value: (sx + w) as u64 });
                }
                if sy + h > self.height {
                    return Err(ProtocolError::BadValue { what: "copy source bottom edge", value: (sy + h) as u64 });
                }
            }
        }
        for t in tiles {
            let (x, y, w, h) = (usize::from(t.x), usize::from(t.y), usize::from(t.w), usize::from(t.h));
            let row_len = w * 4;
            let stride = self.width * 4;
            if let TileData::Copy { src_x, src_y } = t.data {
                let (sx, sy) = (usize::from(src_x), usize::from(src_y));
                // Row by row, in the order that reads each source row before it is overwritten.
                let order: Box<dyn Iterator<Item = usize>> =
                    if sy >= y { Box::new(0..h) } else { Box::new((0..h).rev()) };
                for r in order {
                    let from = (sy + r) * stride + sx * 4;
                    self.rgba.copy_within(from..from + row_len, (y + r) * stride + x * 4);
                }
                continue;
            }
            let rows = self.rgba[y * stride..].chunks_exact_mut(stride).take(h).map(|r| &mut r[x * 4..x * 4 + row_len]);
            match &t.data {
                TileData::Solid(colour) => {
                    let pixel = colour.to_le_bytes();
                    let mut rows = rows;
                    if let Some(first) = rows.next() {
                        for p in first.chunks_exact_mut(4) {
                            p.copy_from_slice(&pixel);
                        }
                        for row in rows {
                            row.copy_from_slice(first);
                        }
                    }
                }
                TileData::Raw(bytes) => {
                    for (row, src) in rows.zip(bytes.chunks_exact(row_len)) {
                        row.copy_from_slice(src);
                    }
                }
                // Applied above.
                TileData::Copy { .. } => {}
                TileData::Lz4(packed) => {
                    let n = row_len * h;
                    self.scratch.resize(n, 0);
                    match block::decompress_into(packed, &mut self.scratch[..n]) {
                        Ok(written) if written == n => {}
                        _ => return Err(ProtocolError::BadLz4 { expected: n }),
                    }
                    for (row, src) in rows.zip(self.scratch.chunks_exact(row_len)) {
                        row.copy_from_slice(src);
                    }
                }
            }
        }
        Ok(())
    }

    /// The pixels, RGBA8, rows top to bottom.
    pub fn rgba(&self) -> &[u8] {
        &self.rgba
    }

    /// [`screen_hash`] of the pixels: what the terminal sends as
    /// [`crate::Resume::screen_hash`].
    pub fn hash(&self) -> u64 {
        screen_hash(&self.rgba)
    }
}

/// A fast hash of one row of pixels (the scroll search compares rows by it, then by bytes).
fn row_hash(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for w in &mut words {
        let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(23);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The 64-bit screen hash of docs/PROTOCOL.md ("Screen hash"): two 32-bit FNV-1a-style
/// lanes over the bytes, `lo` with the FNV-1a 32 basis and prime, `hi` with basis
/// `0x9E3779B9` and multiplier `0x5BD1E995`; the result is `hi << 32 | lo`. Chosen so a
/// browser computes it with `Math.imul`, without BigInt.
pub fn screen_hash(bytes: &[u8]) -> u64 {
    let mut lo: u32 = 0x811C_9DC5;
    let mut hi: u32 = 0x9E37_79B9;
    for &b in bytes {
        lo = (lo ^ u32::from(b)).wrapping_mul(0x0100_0193);
        hi = (hi ^ u32::from(b)).wrapping_mul(0x5BD1_E995);
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

#[cfg(test)]
mod tests;
