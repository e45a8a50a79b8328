//! Rasterizes the phone's fonts (DejaVu Sans, regular and bold, from `assets/fonts/`)
//! into a glyph atlas at build time, so that no guest ever runs a rasterizer: a thousand
//! phones per server start with their text ready in a data segment.
//!
//! Two files land in `OUT_DIR`:
//! - `font_atlas.bin`: every glyph's coverage mask, 4 bits per pixel (16 levels are
//!   indistinguishable from 256 on anti-aliased edges and halve the image), rows top to
//!   bottom, each row `ceil(w/2)` bytes with the left pixel in the high nibble, glyph after
//!   glyph;
//! - `font_atlas.rs`: the tables that index it (faces, glyph metrics, kerning pairs),
//!   included by `src/gfx/font.rs`, which defines the types they use.
//!
//! Character slots are shared with the runtime through the generated `EXTRAS` and
//! `NUMERALS` tables: a full face covers printable ASCII (0x20..=0x7E), Latin-1
//! (0xA0..=0xFF) and `EXTRAS`; a numerals face (large sizes, for clocks and timers) covers
//! only `NUMERALS`.
//!
//! Chinese and Japanese come from one more face, `DroidSansFallback-CJK.ttf` (a subset:
//! common hanzi and kanji, kana, CJK punctuation, fullwidth forms; assets/fonts/LICENSE-Droid.txt)
//! at [`CJK_PX`] only: every full face draws those characters from it (`CJK_CHARS`,
//! `CJK_GLYPHS`). One size keeps the atlas, which every phone holds in memory, near a
//! megabyte more rather than seven.

use std::fmt::Write as _;
use std::path::PathBuf;

/// Punctuation and symbols past Latin-1 that mail and UI text need; U+FFFD stands in for
/// any character the atlas lacks.
const EXTRAS: &[char] = &[
    '\u{2013}', '\u{2014}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2026}', '\u{20AC}',
    '\u{2190}', '\u{2192}', '\u{2713}', '\u{FFFD}',
];

/// What a numerals face covers.
const NUMERALS: &str = " 0123456789:.-";

/// Pixel sizes (em) of the regular full faces.
const REGULAR: &[u16] = &[14, 16, 18, 21, 24, 28, 32];
/// Pixel sizes of the bold full faces.
const BOLD: &[u16] = &[16, 18, 21, 24, 28, 32, 40];
/// Pixel sizes of the regular numerals faces.
const NUMERAL_SIZES: &[u16] = &[64, 88, 128];
/// Pixel size of the CJK face (body text's size on a phone's default screen).
const CJK_PX: u16 = 24;

/// Appends `mask` (one byte per pixel, `width` per row) as 4-bit coverage.
fn pack_nibbles(mask: &[u8], width: usize, out: &mut Vec<u8>) {
    let q = |v: u8| (u32::from(v) * 15 + 127) / 255;
    for row in mask.chunks(width) {
        for pair in row.chunks(2) {
            let hi = q(pair[0]);
            let lo = pair.get(1).map_or(0, |&v| q(v));
            out.push((hi << 4 | lo) as u8);
        }
    }
}

fn full_charset() -> Vec<char> {
    let mut chars: Vec<char> = (0x20u8..=0x7e).map(char::from).collect();
    chars.extend((0xa0u8..=0xff).map(char::from));
    chars.extend_from_slice(EXTRAS);
    chars
}

struct Face<'a> {
    font: &'a fontdue::Font,
    px: u16,
    bold: bool,
    numerals: bool,
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let fonts = manifest.join("../../assets/fonts");
    let regular_path = fonts.join("DejaVuSans.ttf");
    let bold_path = fonts.join("DejaVuSans-Bold.ttf");
    let cjk_path = fonts.join("DroidSansFallback-CJK.ttf");
    for path in [&regular_path, &bold_path, &cjk_path] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let load = |path: &PathBuf| {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        fontdue::Font::from_bytes(bytes, fontdue::FontSettings::default())
            .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
    };
    let regular = load(&regular_path);
    let bold = load(&bold_path);
    let cjk = load(&cjk_path);

    let mut faces = Vec::new();
    for &px in REGULAR {
        faces.push(Face { font: &regular, px, bold: false, numerals: false });
    }
    for &px in BOLD {
        faces.push(Face { font: &bold, px, bold: true, numerals: false });
    }
    for &px in NUMERAL_SIZES {
        faces.push(Face { font: &regular, px, bold: false, numerals: true });
    }

    let full = full_charset();
    let numerals: Vec<char> = NUMERALS.chars().collect();
    let mut bitmaps: Vec<u8> = Vec::new();
    let mut glyph_rows = String::new();
    let mut face_rows = String::new();
    let mut glyph_count = 0usize;

    for face in &faces {
        let chars = if face.numerals { &numerals } else { &full };
        let px = f32::from(face.px);
        let lm = face.font.horizontal_line_metrics(px).expect("DejaVu has horizontal metrics");
        let first = glyph_count;
        for &c in chars {
            let (m, mask) = face.font.rasterize(c, px);
            let (x, y, w, h, offset) = if m.width == 0 || m.height == 0 {
                (0, 0, 0, 0, 0)
            } else {
                let offset = bitmaps.len();
                pack_nibbles(&mask, m.width, &mut bitmaps);
                (m.xmin, -(m.ymin + m.height as i32), m.width, m.height, offset)
            };
            let advance = (m.advance_width * 64.0).round() as u32;
            writeln!(
                glyph_rows,
                "    GlyphDesc {{ advance: {advance}, x: {x}, y: {y}, w: {w}, h: {h}, offset: {offset} }},"
            )
            .expect("write to string");
            glyph_count += 1;
        }
        let ascent = lm.ascent.ceil() as i32;
        let descent = (-lm.descent).ceil() as i32;
        let line_gap = lm.line_gap.round() as i32;
        writeln!(
            face_rows,
            "    FaceDesc {{ px: {}, bold: {}, numerals: {}, ascent: {ascent}, descent: {descent}, \
             line_gap: {line_gap}, first_glyph: {first} }},",
            face.px, face.bold, face.numerals
        )
        .expect("write to string");
    }

    // The CJK face: every character of the subset from U+3000 on, in order (the runtime finds one by binary search).
    let mut cjk_chars: Vec<char> = cjk.chars().keys().copied().filter(|&c| c >= '\u{3000}').collect();
    cjk_chars.sort_unstable();
    let mut cjk_rows = String::new();
    for &c in &cjk_chars {
        let (m, mask) = cjk.rasterize(c, f32::from(CJK_PX));
        let (x, y, w, h, offset) = if m.width == 0 || m.height == 0 {
            (0, 0, 0, 0, 0)
        } else {
            let offset = bitmaps.len();
            pack_nibbles(&mask, m.width, &mut bitmaps);
            (m.xmin, -(m.ymin + m.height as i32), m.width, m.height, offset)
        };
        let advance = (m.advance_width * 64.0).round() as u32;
        writeln!(cjk_rows, "    GlyphDesc {{ advance: {advance}, x: {x}, y: {y}, w: {w}, h: {h}, offset: {offset} }},")
            .expect("write to string");
    }

    let kern_table = |font: &fontdue::Font| -> String {
        let upem = font.units_per_em();
        let mut rows = String::new();
        for (l, &lc) in full.iter().enumerate() {
            for (r, &rc) in full.iter().enumerate() {
                if let Some(k) = font.horizontal_kern(lc, rc, upem) {
                    let k = k.round() as i32;
                    if k != 0 {
                        writeln!(rows, "    ({}, {k}),", (l << 8) | r).expect("write to string");
                    }
                }
            }
        }
        rows
    };

    let mut rs = String::new();
    rs.push_str("// @generated by guest/vmi-guest-sdk/build.rs from assets/fonts; do not edit.\n\n");
    writeln!(rs, "pub(crate) static EXTRAS: [char; {}] = {:?};", EXTRAS.len(), EXTRAS).expect("write");
    writeln!(rs, "pub(crate) const NUMERALS: &str = {NUMERALS:?};").expect("write");
    writeln!(rs, "pub(crate) const REGULAR_UPEM: i32 = {};", regular.units_per_em() as i32).expect("write");
    writeln!(rs, "pub(crate) const BOLD_UPEM: i32 = {};", bold.units_per_em() as i32).expect("write");
    writeln!(rs, "pub(crate) static FACES: [FaceDesc; {}] = [\n{face_rows}];", faces.len()).expect("write");
    writeln!(rs, "pub(crate) static GLYPHS: [GlyphDesc; {glyph_count}] = [\n{glyph_rows}];").expect("write");
    let kr = kern_table(&regular);
    let kb = kern_table(&bold);
    writeln!(rs, "pub(crate) static KERN_REGULAR: &[(u16, i16)] = &[\n{kr}];").expect("write");
    writeln!(rs, "pub(crate) static KERN_BOLD: &[(u16, i16)] = &[\n{kb}];").expect("write");
    writeln!(rs, "pub(crate) static CJK_CHARS: [char; {}] = {:?};", cjk_chars.len(), cjk_chars).expect("write");
    writeln!(rs, "pub(crate) static CJK_GLYPHS: [GlyphDesc; {}] = [\n{cjk_rows}];", cjk_chars.len()).expect("write");

    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("font_atlas.bin"), &bitmaps).expect("write font_atlas.bin");
    std::fs::write(out.join("font_atlas.rs"), rs).expect("write font_atlas.rs");
}
