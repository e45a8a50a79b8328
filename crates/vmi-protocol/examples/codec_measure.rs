//! Measures tile codecs on screenshots of the phone: wire bytes and encode time for full
//! frames, for a keystroke (one text line damaged), and for app-level changes between two
//! screenshots. The winner is what `display::Encoder` does (solid, else LZ4 if smaller,
//! else raw); the figures are in docs/PROTOCOL.md ("Tile codec: measurements").
//!
//! Run with: `cargo run --release -p vmi-protocol --example codec_measure [-- DIR]`
//! (DIR holds 720x1280 PNG screenshots; default /tmp/tour).

use std::error::Error;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lz4_flex::block;
use vmi_protocol::display::{Encoder, Rect, Screen, TILE};
use vmi_protocol::{ServerMessage, encode_server};

/// Per-tile header on the wire: x, y, w, h, encoding.
const TILE_HEADER: usize = 9;
/// FrameUpdate header: tag, seq, count.
const UPDATE_HEADER: usize = 13;

struct Image {
    name: String,
    width: usize,
    height: usize,
    rgba: Vec<u8>,
    png_bytes: u64,
}

fn load(path: &Path) -> Result<Image, Box<dyn Error>> {
    let png_bytes = std::fs::metadata(path)?.len();
    let mut decoder = png::Decoder::new(BufReader::new(File::open(path)?));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or("image too large")?];
    let info = reader.next_frame(&mut buf)?;
    buf.truncate(info.buffer_size());
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
        other => return Err(format!("{}: unsupported colour type {other:?}", path.display()).into()),
    };
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Image { name, width: info.width as usize, height: info.height as usize, rgba, png_bytes })
}

/// The codecs compared. `prev` is the tile as the terminal has it (for the delta codecs).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Codec {
    Raw,
    Lz4Only,
    /// What the encoder does: solid, else LZ4 if smaller, else raw.
    SolidLz4Raw,
    /// Solid, else LZ4 of (tile XOR previous tile) if smaller, else raw.
    SolidXorLz4,
    /// Solid, else LZ4 with the previous tile as dictionary if smaller, else raw.
    SolidDictLz4,
    /// Solid, else LZ4 of the rows minus the row above (PNG's "Up" filter), if smaller, else raw.
    SolidUpLz4,
    /// Solid, else the smaller of LZ4 plain and LZ4 up-filtered, else raw.
    SolidBestLz4,
}

const CODECS: [(Codec, &str); 7] = [
    (Codec::Raw, "raw"),
    (Codec::Lz4Only, "lz4 only"),
    (Codec::SolidLz4Raw, "solid+lz4|raw (chosen)"),
    (Codec::SolidXorLz4, "solid+xor-prev+lz4|raw"),
    (Codec::SolidDictLz4, "solid+lz4-dict-prev|raw"),
    (Codec::SolidUpLz4, "solid+up-filter+lz4|raw"),
    (Codec::SolidBestLz4, "solid+best(lz4,up)|raw"),
];

struct Scratch {
    row_len: usize,
    tile: Vec<u8>,
    prev: Vec<u8>,
    xor: Vec<u8>,
    packed: Vec<u8>,
}

fn gather(out: &mut Vec<u8>, rgba: &[u8], width: usize, (x, y, w, h): (usize, usize, usize, usize)) {
    out.clear();
    for r in y..y + h {
        out.extend_from_slice(&rgba[(r * width + x) * 4..(r * width + x + w) * 4]);
    }
}

fn is_solid(px: &[u8]) -> bool {
    px.chunks_exact(4).all(|p| p == &px[..4])
}

/// Wire bytes of one tile (header included).
fn tile_bytes(codec: Codec, s: &mut Scratch) -> usize {
    let n = s.tile.len();
    let lz4 = |input: &[u8], packed: &mut Vec<u8>| block::compress_into(input, packed).unwrap_or(usize::MAX);
    let payload = match codec {
        Codec::Raw => 4 + n,
        Codec::Lz4Only => 4 + lz4(&s.tile, &mut s.packed),
        _ if is_solid(&s.tile) => 4,
        Codec::SolidLz4Raw => 4 + lz4(&s.tile, &mut s.packed).min(n),
        Codec::SolidXorLz4 => {
            s.xor.clear();
            s.xor.extend(s.tile.iter().zip(&s.prev).map(|(a, b)| a ^ b));
            4 + lz4(&s.xor, &mut s.packed).min(n)
        }
        Codec::SolidUpLz4 | Codec::SolidBestLz4 => {
            let row = s.row_len;
            s.xor.clear();
            s.xor.extend_from_slice(&s.tile[..row]);
            s.xor.extend(s.tile[row..].iter().zip(&s.tile).map(|(a, b)| a.wrapping_sub(*b)));
            let up = lz4(&s.xor, &mut s.packed);
            let plain = if codec == Codec::SolidBestLz4 { lz4(&s.tile, &mut s.packed) } else { usize::MAX };
            4 + up.min(plain).min(n)
        }
        Codec::SolidDictLz4 => {
            let m = block::compress_into_with_dict(&s.tile, &mut s.packed, &s.prev).unwrap_or(usize::MAX);
            4 + m.min(n)
        }
    };
    TILE_HEADER + payload
}

fn grid(width: usize, height: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut tiles = Vec::new();
    for y in (0..height).step_by(TILE) {
        for x in (0..width).step_by(TILE) {
            tiles.push((x, y, TILE.min(width - x), TILE.min(height - y)));
        }
    }
    tiles
}

/// Bytes and time per update for `codec` over the tiles of `img` that differ from `prev`
/// (all tiles when `prev` is None, i.e. a full frame).
fn measure(codec: Codec, img: &[u8], prev: Option<&[u8]>, width: usize, height: usize, reps: u32) -> (usize, Duration) {
    let zeros;
    let prev = match prev {
        Some(p) => p,
        None => {
            zeros = vec![0; img.len()];
            &zeros
        }
    };
    let full = prev.iter().all(|&b| b == 0);
    let mut s = Scratch {
        row_len: 0,
        tile: vec![],
        prev: vec![],
        xor: vec![],
        packed: vec![0; block::get_maximum_output_size(TILE * TILE * 4)],
    };
    let tiles = grid(width, height);
    let mut bytes = 0;
    let start = Instant::now();
    for _ in 0..reps {
        bytes = UPDATE_HEADER;
        for &t in &tiles {
            gather(&mut s.tile, img, width, t);
            s.row_len = t.2 * 4;
            gather(&mut s.prev, prev, width, t);
            if !full && s.tile == s.prev {
                continue;
            }
            bytes += tile_bytes(codec, &mut s);
        }
    }
    (bytes, start.elapsed() / reps)
}

fn kib(n: usize) -> String {
    format!("{:.1} KiB", n as f64 / 1024.0)
}

/// A simulated keystroke in a text line: a glyph-wide copy of the text left of the cursor
/// is inserted at the cursor, and everything right of it on that line shifts right, as
/// when typing in the middle of a line. Returns the new image and the damaged text line.
fn keystroke(img: &Image) -> (Vec<u8>, Rect) {
    let w = img.width;
    // The cursor: the bluest column below the title bar; fall back to a line near the top.
    let mut cursor = None;
    for y in 160..img.height.min(1200) {
        for x in 0..w {
            let p = &img.rgba[(y * w + x) * 4..][..4];
            if p[2] > 150 && p[2] as i32 > p[0] as i32 + 80 {
                let (x0, y0, y1) = cursor.unwrap_or((x, y, y));
                cursor = Some((x0.min(x), y0.min(y), y1.max(y)));
            }
        }
    }
    let (cx, y0, y1) = cursor.unwrap_or((300, 275, 312));
    let (top, bottom) = (y0.saturating_sub(6), (y1 + 6).min(img.height));
    let glyph = 14;
    let mut out = img.rgba.clone();
    for y in top..bottom {
        for x in (cx..w).rev() {
            let src = (y * w + x - glyph) * 4;
            out.copy_within(src..src + 4, (y * w + x) * 4);
        }
    }
    // The app damages the whole text line.
    (out, Rect::new(0, top as u32, w as u32, (bottom - top) as u32))
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/tmp/tour".into()));
    let mut paths: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    let images = paths.iter().map(|p| load(p)).collect::<Result<Vec<_>, _>>()?;
    if images.is_empty() {
        return Err(format!("no PNG in {}", dir.display()).into());
    }
    let (width, height) = (images[0].width, images[0].height);
    println!("{} screenshots of {}x{} from {}\n", images.len(), width, height, dir.display());

    println!(
        "(a) full frame ({} tiles of {TILE}x{TILE}): wire bytes per frame, encode time per frame",
        grid(width, height).len()
    );
    print!("{:<24}", "codec");
    for img in &images {
        print!(" {:>13}", &img.name[..img.name.len().min(13)]);
    }
    println!(" {:>11} {:>9}", "mean", "time");
    for (codec, label) in CODECS {
        print!("{label:<24}");
        let mut total = 0;
        let mut time = Duration::ZERO;
        for img in &images {
            let (bytes, t) = measure(codec, &img.rgba, None, width, height, 5);
            total += bytes;
            time += t;
            print!(" {:>13}", kib(bytes));
        }
        println!(" {:>11} {:>7.2?}", kib(total / images.len()), time / images.len() as u32);
    }
    print!("{:<24}", "(ref) lz4 whole frame");
    for img in &images {
        print!(" {:>13}", kib(block::compress(&img.rgba).len()));
    }
    println!();
    print!("{:<24}", "(ref) PNG file");
    for img in &images {
        print!(" {:>13}", kib(img.png_bytes as usize));
    }
    println!();

    // The real encoder and screen, end to end.
    let mut enc_time = Duration::ZERO;
    let mut dec_time = Duration::ZERO;
    let mut hash_time = Duration::ZERO;
    let mut total = 0;
    let (mut solid, mut lz4, mut raw) = (0, 0, 0);
    for img in &images {
        let mut screen = Screen::new(width as u16, height as u16);
        let start = Instant::now();
        let reps = 10;
        let mut tiles = Vec::new();
        for _ in 0..reps {
            tiles = Encoder::new(width as u16, height as u16).full(&img.rgba);
        }
        enc_time += start.elapsed() / reps;
        for t in &tiles {
            match t.data {
                vmi_protocol::TileData::Solid(_) => solid += 1,
                vmi_protocol::TileData::Lz4(_) => lz4 += 1,
                vmi_protocol::TileData::Raw(_) => raw += 1,
                vmi_protocol::TileData::Copy { .. } => {}
            }
        }
        let start = Instant::now();
        for _ in 0..reps {
            screen.apply(&tiles)?;
        }
        dec_time += start.elapsed() / reps;
        let start = Instant::now();
        std::hint::black_box(screen.hash());
        hash_time += start.elapsed();
        assert_eq!(screen.rgba(), &img.rgba[..]);
        total += encode_server(&ServerMessage::FrameUpdate { seq: 1, tiles }).len();
    }
    let n = images.len() as u32;
    println!(
        "Encoder::full: mean {} per frame (tiles: {solid} solid, {lz4} lz4, {raw} raw), encode {:.2?}, Screen::apply {:.2?}, Screen::hash {:.2?}",
        kib(total / images.len()),
        enc_time / n,
        dec_time / n,
        hash_time / n
    );

    println!("\n(b) keystroke: one text line damaged (simulated typing in the notes app)");
    let notes = images.iter().find(|i| i.name.contains("notes")).unwrap_or(&images[0]);
    let (typed, damage) = keystroke(notes);
    println!("    image {}, damage {damage:?}", notes.name);
    changed_table(&notes.rgba, &typed, width, height, &[damage]);

    println!("\n(c) app-level changes between consecutive screenshots (damage: whole screen)");
    for pair in images.windows(2) {
        println!("    {} -> {}", pair[0].name, pair[1].name);
        changed_table(&pair[0].rgba, &pair[1].rgba, width, height, &[Rect::new(0, 0, width as u32, height as u32)]);
    }
    Ok(())
}

/// Bytes and time of each codec for the tiles changed between `before` and `after`, then
/// the real `Encoder::encode` (including its compare against the copy).
fn changed_table(before: &[u8], after: &[u8], width: usize, height: usize, damage: &[Rect]) {
    for (codec, label) in CODECS {
        let (bytes, t) = measure(codec, after, Some(before), width, height, 20);
        println!("    {label:<24} {:>10} {:>9.1?} (all tiles compared)", kib(bytes), t);
    }
    // The encoder only looks at tiles under the damage; alternate between the two images so
    // every call has real changes to send.
    let mut encoder = Encoder::new(width as u16, height as u16);
    encoder.assume_sent(before);
    let reps = 200;
    let mut bytes = 0;
    let mut count = 0;
    let start = Instant::now();
    for i in 0..reps {
        let img = if i % 2 == 0 { after } else { before };
        let tiles = encoder.encode(img, damage);
        if i == 0 {
            count = tiles.len();
            bytes = encode_server(&ServerMessage::FrameUpdate { seq: 1, tiles }).len();
        }
    }
    println!("    Encoder::encode          {:>10} {:>9.1?} ({count} tiles sent)", kib(bytes), start.elapsed() / reps);
    let mut check = Encoder::new(width as u16, height as u16);
    check.assume_sent(before);
    let mut screen = Screen::new(width as u16, height as u16);
    screen.apply(&Encoder::new(width as u16, height as u16).full(before)).ok();
    screen.apply(&check.encode(after, damage)).ok();
    assert_eq!(screen.rgba(), after, "the encoder's output does not reproduce the image");
}
