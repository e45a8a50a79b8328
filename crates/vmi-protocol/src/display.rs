//! The display model: the site's tile [`Encoder`] and the terminal's [`Screen`].
//!
//! The phone's screen is `width × height` RGBA8 pixels (bytes R, G, B, A; rows top to
//! bottom; no padding). The site cuts it into a grid of [`TILE`]×[`TILE`] tiles (narrower
//! or shorter on the right and bottom edges) and keeps a copy of what it last sent. For a
//! damaged region it compares each grid tile with that copy and sends only the tiles that
//! really changed, so a repaint of identical pixels costs nothing. The terminal applies
//! the tiles to its [`Screen`]. Both start from all-zero bytes, and both can compute the
//! [`screen_hash`] that lets a reconnecting terminal prove its screen is current.
//!
//! A changed tile is sent as [`TileData::Solid`] when all its pixels are equal, else as
//! [`TileData::Lz4`] when that is smaller than raw, else as [`TileData::Raw`]. That choice
//! was measured on screenshots of the phone (`examples/codec_measure.rs`; figures in
//! docs/PROTOCOL.md).

use lz4_flex::block;

use crate::error::ProtocolError;
use crate::message::{Tile, TileData};

/// Side of the site's tile grid, in pixels.
pub const TILE: usize = 64;

/// Largest LZ4 output for one grid tile.
const PACKED_CAP: usize = block::get_maximum_output_size(TILE * TILE * 4);

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
        }
    }

    /// Screen width in pixels.
    pub fn width(&self) -> u16 {
        self.width as u16
    }

    /// Screen height in pixels.
    pub fn height(&self) -> u16 {
        self.height as u16
    }

    /// The tiles inside `damage` whose pixels in `rgba` differ from what was last sent,
    /// in row-major grid order; the copy is updated to match. Empty when nothing changed.
    ///
    /// # Panics
    ///
    /// When `rgba` is not `width * height * 4` bytes.
    pub fn encode(&mut self, rgba: &[u8], damage: &[Rect]) -> Vec<Tile> {
        self.check_len(rgba);
        self.dirty.fill(false);
        for r in damage {
            let x0 = (r.x as usize).min(self.width);
            let y0 = (r.y as usize).min(self.height);
            let x1 = (r.x.saturating_add(r.w) as usize).min(self.width);
            let y1 = (r.y.saturating_add(r.h) as usize).min(self.height);
            if x0 >= x1 || y0 >= y1 {
                continue;
            }
            for ty in y0 / TILE..=(y1 - 1) / TILE {
                self.dirty[ty * self.cols + x0 / TILE..=ty * self.cols + (x1 - 1) / TILE].fill(true);
            }
        }
        let mut tiles = Vec::new();
        for index in 0..self.dirty.len() {
            if self.dirty[index]
                && let Some(tile) = self.tile(rgba, index % self.cols, index / self.cols, false)
            {
                tiles.push(tile);
            }
        }
        tiles
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

    /// Grid tile (`tx`, `ty`), if `force` or its pixels changed.
    fn tile(&mut self, rgba: &[u8], tx: usize, ty: usize, force: bool) -> Option<Tile> {
        let (x, y) = (tx * TILE, ty * TILE);
        let (w, h) = (TILE.min(self.width - x), TILE.min(self.height - y));
        let stride = self.width * 4;
        let row_len = w * 4;
        let row = |r: usize| (y + r) * stride + x * 4..(y + r) * stride + x * 4 + row_len;
        // Rows above the first difference are already in the copy.
        let first_changed = (0..h).find(|&r| rgba[row(r)] != self.sent[row(r)]);
        if first_changed.is_none() && !force {
            return None;
        }
        self.pixels.clear();
        for r in 0..h {
            let src = &rgba[row(r)];
            self.pixels.extend_from_slice(src);
        }
        if let Some(first) = first_changed {
            for r in first..h {
                self.sent[row(r)].copy_from_slice(&rgba[row(r)]);
            }
        }
        Some(Tile { x: x as u16, y: y as u16, w: w as u16, h: h as u16, data: self.pack(row_len) })
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

    /// Paints `tiles` in order.
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
        }
        for t in tiles {
            let (x, y, w, h) = (usize::from(t.x), usize::from(t.y), usize::from(t.w), usize::from(t.h));
            let row_len = w * 4;
            let stride = self.width * 4;
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
