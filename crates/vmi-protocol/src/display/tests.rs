use super::*;

use crate::test_rng::Rng;

/// Paints a rectangle: a solid colour, stripes (compressible) or noise (not).
fn paint(rng: &mut Rng, rgba: &mut [u8], width: usize, r: Rect) {
    let kind = rng.below(3);
    let colour = (rng.next() as u32).to_le_bytes();
    for y in r.y as usize..(r.y + r.h) as usize {
        for x in r.x as usize..(r.x + r.w) as usize {
            let p = &mut rgba[(y * width + x) * 4..][..4];
            match kind {
                0 => p.copy_from_slice(&colour),
                1 => p.copy_from_slice(&if (x / 3 + y) % 4 == 0 { [0, 0, 0, 255] } else { colour }),
                _ => p.copy_from_slice(&(rng.next() as u32).to_le_bytes()),
            }
        }
    }
}

fn random_rect(rng: &mut Rng, width: usize, height: usize) -> Rect {
    let x = rng.below(width) as u32;
    let y = rng.below(height) as u32;
    let w = 1 + rng.below((width - x as usize).min(150)) as u32;
    let h = 1 + rng.below((height - y as usize).min(150)) as u32;
    Rect::new(x, y, w, h)
}

#[test]
fn encoder_output_reproduces_the_image_under_random_damage() {
    for (seed, (width, height)) in
        [(1u64, (720usize, 1280usize)), (2, (100, 70)), (3, (64, 64)), (4, (1, 130)), (5, (65, 1))]
    {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut phone = vec![0u8; width * height * 4];
        let mut encoder = Encoder::new(width as u16, height as u16);
        let mut screen = Screen::new(width as u16, height as u16);
        paint(&mut rng, &mut phone, width, Rect::new(0, 0, width as u32, height as u32));
        screen.apply(&encoder.full(&phone)).unwrap();
        assert_eq!(screen.rgba(), &phone[..]);
        let mut pending = Vec::new();
        for step in 0..60 {
            for _ in 0..1 + rng.below(4) {
                let r = random_rect(&mut rng, width, height);
                paint(&mut rng, &mut phone, width, r);
                pending.push(r);
            }
            // Sometimes hold the update back (flow control) and coalesce with the next.
            if rng.below(3) == 0 {
                continue;
            }
            // Damage may also reach past the screen.
            if rng.below(4) == 0 {
                pending.push(Rect::new(width as u32 - 1, height as u32 - 1, u32::MAX, u32::MAX));
            }
            let tiles = encoder.encode(&phone, &pending);
            pending.clear();
            screen.apply(&tiles).unwrap();
            assert_eq!(screen.rgba(), &phone[..], "{width}x{height} step {step}");
            assert_eq!(encoder.sent(), &phone[..]);
            assert_eq!(screen.hash(), encoder.hash());
            // Each tile lies within one grid tile.
            for t in &tiles {
                assert!(usize::from(t.x).is_multiple_of(TILE));
                assert_eq!(usize::from(t.y) / TILE, (usize::from(t.y) + usize::from(t.h) - 1) / TILE);
                assert!(t.w as usize <= TILE && t.h as usize <= TILE);
            }
        }
    }
}

#[test]
fn repainting_identical_pixels_sends_nothing() {
    let (width, height) = (720, 1280);
    let mut rng = Rng(7);
    let mut phone = vec![0u8; width * height * 4];
    paint(&mut rng, &mut phone, width, Rect::new(0, 0, 720, 1280));
    let mut encoder = Encoder::new(720, 1280);
    assert_eq!(encoder.full(&phone).len(), 12 * 20);
    assert!(encoder.encode(&phone, &[Rect::new(0, 0, 720, 1280)]).is_empty());
    assert!(encoder.encode(&phone, &[Rect::new(10, 10, 5, 5), Rect::new(700, 1270, 100, 100)]).is_empty());
    // A fresh encoder told what the terminal shows (resume) has nothing to send either.
    let mut fresh = Encoder::new(720, 1280);
    fresh.assume_sent(&phone);
    assert!(fresh.encode(&phone, &[Rect::new(0, 0, 720, 1280)]).is_empty());
    // One changed pixel: exactly its row of its tile; two rows apart: the rows from one to the other.
    phone[(100 * width + 130) * 4] ^= 1;
    let tiles = fresh.encode(&phone, &[Rect::new(0, 0, 720, 1280)]);
    assert_eq!(tiles.len(), 1);
    assert_eq!((tiles[0].x, tiles[0].y, tiles[0].w, tiles[0].h), (128, 100, 64, 1));
    phone[(70 * width + 130) * 4] ^= 1;
    phone[(80 * width + 131) * 4] ^= 1;
    let tiles = fresh.encode(&phone, &[Rect::new(0, 0, 720, 1280)]);
    assert_eq!((tiles[0].x, tiles[0].y, tiles[0].w, tiles[0].h), (128, 70, 64, 11));
}

#[test]
fn edge_tiles_are_smaller_and_encodings_are_chosen() {
    let (width, height) = (720usize, 1280usize);
    let mut phone = vec![0u8; width * height * 4];
    let mut rng = Rng(11);
    // Noise in the top-left tile, stripes in the next, the rest solid black.
    for p in phone[..width * 64 * 4].chunks_exact_mut(4).enumerate().filter(|(i, _)| i % width < 64) {
        p.1.copy_from_slice(&(rng.next() as u32).to_le_bytes());
    }
    for y in 0..64 {
        for x in 64..128 {
            phone[(y * width + x) * 4] = if x % 5 == 0 { 200 } else { 10 };
        }
    }
    let tiles = Encoder::new(720, 1280).full(&phone);
    assert_eq!(tiles.len(), 240);
    assert!(matches!(tiles[0].data, TileData::Raw(ref b) if b.len() == 64 * 64 * 4));
    assert!(matches!(tiles[1].data, TileData::Lz4(_)));
    assert_eq!(tiles[2].data, TileData::Solid(0));
    let last_in_row = &tiles[11];
    assert_eq!((last_in_row.x, last_in_row.w, last_in_row.h), (704, 16, 64));
    let last = &tiles[239];
    assert_eq!((last.x, last.y, last.w, last.h), (704, 1216, 16, 64));
    let small = Encoder::new(100, 70).full(&[7; 100 * 70 * 4]);
    let sizes: Vec<_> = small.iter().map(|t| (t.x, t.y, t.w, t.h)).collect();
    assert_eq!(sizes, [(0, 0, 64, 64), (64, 0, 36, 64), (0, 64, 64, 6), (64, 64, 36, 6)]);
    assert!(small.iter().all(|t| t.data == TileData::Solid(u32::from_le_bytes([7; 4]))));
    assert!(Encoder::new(0, 0).full(&[]).is_empty());
}

#[test]
fn screen_refuses_bad_tiles_before_painting() {
    let mut screen = Screen::new(100, 70);
    let ok = Tile { x: 0, y: 0, w: 2, h: 2, data: TileData::Solid(u32::MAX) };
    let bad = |x, y, w, h, data| vec![ok.clone(), Tile { x, y, w, h, data }];
    let cases = [
        (bad(99, 0, 2, 1, TileData::Solid(1)), ProtocolError::BadValue { what: "tile right edge", value: 101 }),
        (bad(0, 69, 1, 2, TileData::Solid(1)), ProtocolError::BadValue { what: "tile bottom edge", value: 71 }),
        (
            bad(u16::MAX, 0, u16::MAX, 1, TileData::Solid(1)),
            ProtocolError::BadValue { what: "tile right edge", value: 131070 },
        ),
        (bad(0, 0, 0, 1, TileData::Solid(1)), ProtocolError::BadValue { what: "tile width", value: 0 }),
        (bad(0, 0, 1, 0, TileData::Solid(1)), ProtocolError::BadValue { what: "tile height", value: 0 }),
        (bad(0, 0, 2, 2, TileData::Raw(vec![0; 15])), ProtocolError::BadValue { what: "raw tile length", value: 15 }),
        (
            bad(0, 0, 10, 2, TileData::Copy { src_x: 91, src_y: 0 }),
            ProtocolError::BadValue { what: "copy source right edge", value: 101 },
        ),
        (
            bad(0, 0, 10, 2, TileData::Copy { src_x: 0, src_y: u16::MAX }),
            ProtocolError::BadValue { what: "copy source bottom edge", value: 65537 },
        ),
    ];
    for (tiles, err) in cases {
        assert_eq!(screen.apply(&tiles), Err(err));
        assert!(screen.rgba().iter().all(|&b| b == 0), "painted before refusing");
    }
    // LZ4 that is garbage, or decompresses to the wrong size.
    let garbage = Tile { x: 0, y: 0, w: 2, h: 2, data: TileData::Lz4(vec![0xFF; 5]) };
    assert_eq!(screen.apply(&[garbage]), Err(ProtocolError::BadLz4 { expected: 16 }));
    let short = Tile { x: 0, y: 0, w: 2, h: 2, data: TileData::Lz4(block::compress(&[1; 12])) };
    assert_eq!(screen.apply(&[short]), Err(ProtocolError::BadLz4 { expected: 16 }));
    let long = Tile { x: 0, y: 0, w: 2, h: 2, data: TileData::Lz4(block::compress(&[1; 20])) };
    assert_eq!(screen.apply(&[long]), Err(ProtocolError::BadLz4 { expected: 16 }));
    let empty = Tile { x: 0, y: 0, w: 2, h: 2, data: TileData::Lz4(vec![]) };
    assert_eq!(screen.apply(&[empty]), Err(ProtocolError::BadLz4 { expected: 16 }));
    // A tile touching the bottom-right corner is fine.
    let corner = Tile { x: 98, y: 68, w: 2, h: 2, data: TileData::Lz4(block::compress(&[9; 16])) };
    screen.apply(&[corner]).unwrap();
    assert_eq!(&screen.rgba()[(69 * 100 + 99) * 4..], &[9, 9, 9, 9]);
}

/// The test vectors of docs/PROTOCOL.md ("Screen hash").
#[test]
fn screen_hash_test_vectors() {
    assert_eq!(screen_hash(&[]), 0x9E37_79B9_811C_9DC5);
    assert_eq!(screen_hash(&[0x61]), 0xD587_82B8_E40C_292C);
    assert_eq!(screen_hash(&[0xFF, 0, 0, 0xFF, 0, 0, 0xFF, 0xFF]), 0xCD13_D999_F2B5_8399);
    assert_eq!(Screen::new(720, 1280).hash(), 0x7B12_79B9_9BC9_9DC5);
    assert_eq!(Encoder::new(720, 1280).hash(), 0x7B12_79B9_9BC9_9DC5);
}

/// A list of rows of "text": each row of pixels differs from its neighbours, like glyphs, and
/// some are blank, like the gaps between lines.
fn list_line(index: usize, width: usize) -> Vec<u8> {
    let mut row = vec![240u8; width * 4];
    if index % 7 >= 5 {
        return row; // a blank line of background
    }
    let seed = (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for (x, p) in row.chunks_exact_mut(4).enumerate() {
        if (seed.rotate_left((x % 61) as u32) >> 7).is_multiple_of(5) {
            p.copy_from_slice(&[20, 20, 30, 255]);
        }
    }
    row
}

/// Draws the content rows `top..` of a list into the region `y0..y1` of `rgba`.
fn draw_list(rgba: &mut [u8], width: usize, (y0, y1): (usize, usize), top: usize) {
    for y in y0..y1 {
        rgba[y * width * 4..(y + 1) * width * 4].copy_from_slice(&list_line(top + y - y0, width));
    }
}

#[test]
fn a_scroll_is_sent_as_a_copy_and_the_uncovered_strip() {
    let (width, height) = (720usize, 1280usize);
    // A header and a footer that never move, a list between them that scrolls.
    let region = (130usize, 1150usize);
    let mut phone = vec![0u8; width * height * 4];
    phone[..region.0 * width * 4].fill(90);
    phone[region.1 * width * 4..].fill(60);
    draw_list(&mut phone, width, region, 0);
    let mut with = Encoder::new(720, 1280).with_copies(true);
    let mut without = Encoder::new(720, 1280);
    let mut screen = Screen::new(720, 1280);
    screen.apply(&with.full(&phone)).unwrap();
    without.assume_sent(&phone);
    let damage = [Rect::new(0, region.0 as u32, width as u32, (region.1 - region.0) as u32)];
    let (mut top, mut bytes_with, mut bytes_without) = (0usize, 0usize, 0usize);
    // A fling down and back up, fast then slow, and a jump too far to copy anything.
    for step in [37usize, 64, 120, 9, 1, 3000].into_iter().map(|d| d as isize).chain([-50, -200, -7]) {
        top = (top as isize + step).max(0) as usize;
        draw_list(&mut phone, width, region, top);
        let tiles = with.encode(&phone, &damage);
        screen.apply(&tiles).unwrap();
        assert_eq!(screen.hash(), screen_hash(&phone), "after a scroll by {step}");
        assert_eq!(with.sent(), &phone[..]);
        let copies: Vec<_> = tiles.iter().filter(|t| matches!(t.data, TileData::Copy { .. })).collect();
        if step.unsigned_abs() < 1000 {
            assert_eq!(copies.len(), 1, "a scroll by {step} is one copy");
            let c = copies[0];
            let TileData::Copy { src_x, src_y } = c.data else { unreachable!() };
            assert_eq!((src_x, c.x, c.w), (0, 0, 720));
            assert_eq!(i32::from(src_y) - i32::from(c.y), step as i32);
            assert!(matches!(tiles[0].data, TileData::Copy { .. }), "the copy comes first");
        } else {
            assert!(copies.is_empty(), "nothing on screen was there before");
        }
        let sent = crate::encode_server(&crate::ServerMessage::FrameUpdate { seq: 1, tiles }).len();
        let plain = without.encode(&phone, &damage);
        assert!(plain.iter().all(|t| !matches!(t.data, TileData::Copy { .. })));
        let plain = crate::encode_server(&crate::ServerMessage::FrameUpdate { seq: 1, tiles: plain }).len();
        if step.unsigned_abs() < 1000 {
            bytes_with += sent;
            bytes_without += plain;
        }
    }
    assert!(bytes_with * 4 < bytes_without, "copies sent {bytes_with} bytes, tiles alone {bytes_without}");
}

#[test]
fn overlapping_copies_read_the_screen_as_it_was() {
    let (width, height) = (8usize, 6usize);
    let pixels: Vec<u8> = (0..width * height * 4).map(|i| (i / 4) as u8).collect();
    let full = Tile { x: 0, y: 0, w: 8, h: 6, data: TileData::Raw(pixels.clone()) };
    for (src_y, dst_y) in [(0u16, 2u16), (2, 0), (1, 1)] {
        let mut screen = Screen::new(8, 6);
        let copy = Tile { x: 1, y: dst_y, w: 6, h: 4, data: TileData::Copy { src_x: 2, src_y } };
        screen.apply(&[full.clone(), copy]).unwrap();
        let mut want = pixels.clone();
        for r in 0..4 {
            let from = ((usize::from(src_y) + r) * width + 2) * 4;
            let row = pixels[from..from + 24].to_vec();
            let to = ((usize::from(dst_y) + r) * width + 1) * 4;
            want[to..to + 24].copy_from_slice(&row);
        }
        assert_eq!(screen.rgba(), &want[..], "copy from row {src_y} to {dst_y}");
    }
}
