//! CI-sized fuzzing of the decoders: a million generated inputs per test run.
//!
//! Inputs are random short byte strings and mutations (bit flips, truncations, length-field
//! tweaks, insertions, deletions) of valid encodings. Every input goes through both
//! decoders; a decoded frame update is also applied to a [`Screen`]. Nothing may panic, and
//! whatever decodes must re-encode to the very same bytes (so it is decodable again).
//! A tiny xorshift generator keeps this fast; proptest covers the same ground more gently
//! in `wire::tests`.

use std::time::Instant;

use lz4_flex::block;

use crate::display::Screen;
use crate::message::{
    ClientMessage, Display, ErrorCode, Input, PROTOCOL_VERSION, Resume, ServerMessage, Tile, TileData, TouchPhase,
};
use crate::{decode_client, decode_server, encode_client, encode_server};

/// Inputs per run; `VMI_FUZZ_INPUTS` asks for more (or fewer) in a longer local run.
const INPUTS: u64 = 1_000_000;
const SCREEN_W: u16 = 64;
const SCREEN_H: u16 = 48;

use crate::test_rng::Rng;

impl Rng {
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    /// Mostly small numbers and edge values, sometimes anything.
    fn int(&mut self) -> u64 {
        match self.below(4) {
            0 => self.below(4) as u64,
            1 => u64::MAX - self.below(2) as u64,
            2 => self.below(1000) as u64,
            _ => self.next(),
        }
    }
    fn string(&mut self) -> String {
        const PIECES: [&str; 6] = ["a", "Zz", "é", "😀", " ", "wss://site/"];
        (0..self.below(12)).map(|_| PIECES[self.below(PIECES.len())]).collect()
    }
}

fn gen_client(rng: &mut Rng) -> ClientMessage {
    match rng.below(7) {
        5 => ClientMessage::Display(Display {
            width: rng.int() as u16,
            height: rng.int() as u16,
            density: rng.int() as u16,
        }),
        0 => ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            device_token: rng.string(),
            resume: rng.chance(2).then(|| Resume { last_frame_seq: rng.int(), screen_hash: rng.next() }),
            asleep: rng.chance(2),
            display: rng.chance(2).then(|| Display {
                width: rng.int() as u16,
                height: rng.int() as u16,
                density: rng.int() as u16,
            }),
        },
        1 => {
            let input = if rng.chance(2) {
                let phase = [TouchPhase::Down, TouchPhase::Move, TouchPhase::Up][rng.below(3)];
                let pointer = if rng.chance(2) { 0 } else { rng.below(10) as u8 };
                Input::Touch { phase, x: rng.int() as u16, y: rng.int() as u16, pointer }
            } else {
                let text = rng.chance(2).then(|| char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('x'));
                Input::Key { code: rng.below(10) as u8, text }
            };
            ClientMessage::Input { seq: rng.int(), input }
        }
        2 if rng.chance(3) => {
            ClientMessage::Join { version: PROTOCOL_VERSION, device_token: rng.string(), ticket: rng.string() }
        }
        2 => ClientMessage::FrameAck { seq: rng.int() },
        3 if rng.chance(3) => ClientMessage::Prepared,
        3 => ClientMessage::Sleep,
        4 => ClientMessage::Wake,
        _ => ClientMessage::Ping { nonce: rng.next() },
    }
}

fn gen_tile(rng: &mut Rng) -> Tile {
    let w = 1 + rng.below(16) as u16;
    let h = 1 + rng.below(16) as u16;
    // Mostly on the fuzz screen, sometimes off it.
    let x = if rng.chance(8) { rng.int() as u16 } else { rng.below(usize::from(SCREEN_W - w) + 1) as u16 };
    let y = if rng.chance(8) { rng.int() as u16 } else { rng.below(usize::from(SCREEN_H - h) + 1) as u16 };
    let n = usize::from(w) * usize::from(h) * 4;
    let pixels: Vec<u8> = (0..n).map(|i| if rng.chance(4) { rng.next() as u8 } else { (i / 7) as u8 }).collect();
    let data = match rng.below(4) {
        0 => TileData::Solid(rng.next() as u32),
        1 => TileData::Lz4(block::compress(&pixels)),
        2 => TileData::Copy {
            src_x: rng.below(usize::from(SCREEN_W)) as u16,
            src_y: rng.below(usize::from(SCREEN_H)) as u16,
        },
        _ => TileData::Raw(pixels),
    };
    Tile { x, y, w, h, data }
}

fn gen_server(rng: &mut Rng) -> ServerMessage {
    match rng.below(7) {
        0 => ServerMessage::Welcome {
            version: PROTOCOL_VERSION,
            width: rng.int() as u16,
            height: rng.int() as u16,
            last_input_seq: rng.int(),
            resumed: rng.chance(2),
        },
        1 | 2 => {
            ServerMessage::FrameUpdate { seq: rng.int(), tiles: (0..rng.below(5)).map(|_| gen_tile(rng)).collect() }
        }
        3 if rng.chance(2) => ServerMessage::InputDurable { seq: rng.int() },
        3 => ServerMessage::InputAck { seq: rng.int() },
        4 => ServerMessage::Notification { title: rng.string(), body: rng.string(), at_ms: rng.int() },
        5 if rng.chance(3) => ServerMessage::Screen { width: rng.int() as u16, height: rng.int() as u16 },
        5 if rng.chance(2) => ServerMessage::Clipboard { text: rng.string() },
        5 if rng.chance(2) => ServerMessage::Prepare { url: rng.string(), ticket: rng.string() },
        5 if rng.chance(2) => ServerMessage::Joined,
        5 => ServerMessage::Redirect { url: rng.string() },
        _ => {
            let code = ErrorCode::ALL[rng.below(ErrorCode::ALL.len())];
            ServerMessage::Error { code, message: rng.string() }
        }
    }
}

/// Rewrites a few bytes of `input` in place (or its length).
fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        if input.is_empty() {
            input.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(input.len());
        match rng.below(7) {
            0 | 1 => input[at] ^= 1 << rng.below(8),
            2 => input.truncate(at),
            3 => {
                // A length or count field: u16 or u32 at `at`, set to an interesting value.
                let value: u32 = match rng.below(6) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => 4096 + rng.below(2) as u32,
                    3 => 65536 + rng.below(2) as u32,
                    4 => (input.len() - at) as u32 + rng.below(3) as u32 - 1,
                    _ => rng.below(600) as u32,
                };
                let width = if rng.chance(2) { 2 } else { 4 };
                for (i, b) in value.to_le_bytes().into_iter().take(width).enumerate() {
                    if let Some(slot) = input.get_mut(at + i) {
                        *slot = b;
                    }
                }
            }
            4 => input.insert(at, rng.next() as u8),
            5 => {
                input.remove(at);
            }
            _ => input[at] = [0, 1, 2, 0x7F, 0x80, 0xFF][rng.below(6)],
        }
    }
}

/// Decodes `input` both ways; what decodes must be canonical, and frame updates apply
/// without panicking.
fn check(input: &[u8], screen: &mut Screen, stats: &mut [u64; 3]) {
    if let Ok(msg) = decode_client(input) {
        stats[0] += 1;
        let again = encode_client(&msg);
        assert_eq!(again, input, "{msg:?} does not re-encode to its bytes");
        assert_eq!(decode_client(&again).as_ref(), Ok(&msg));
    }
    if let Ok(msg) = decode_server(input) {
        stats[1] += 1;
        let again = encode_server(&msg);
        assert_eq!(again, input, "{msg:?} does not re-encode to its bytes");
        assert_eq!(decode_server(&again).as_ref(), Ok(&msg));
        if let ServerMessage::FrameUpdate { tiles, .. } = &msg
            && screen.apply(tiles).is_ok()
        {
            stats[2] += 1;
        }
    }
}

#[test]
fn fuzz_decoders_one_million() {
    let inputs = std::env::var("VMI_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(INPUTS);
    let seed = std::env::var("VMI_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5EED_F022);
    let start = Instant::now();
    let mut rng = Rng(seed);
    let corpus: Vec<Vec<u8>> = (0..4096)
        .map(|i| if i % 2 == 0 { encode_client(&gen_client(&mut rng)) } else { encode_server(&gen_server(&mut rng)) })
        .collect();
    let mut screen = Screen::new(SCREEN_W, SCREEN_H);
    let mut input = Vec::with_capacity(4096);
    let mut stats = [0u64; 3];
    for i in 0..inputs {
        input.clear();
        if i % 4 == 0 {
            // Random short bytes, half of them starting with a real type tag.
            let len = rng.below(40);
            input.extend((0..len).map(|_| rng.next() as u8));
            if len > 0 && rng.chance(2) {
                input[0] =
                    [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87][rng.below(13)];
            }
        } else {
            input.extend_from_slice(&corpus[rng.below(corpus.len())]);
            mutate(&mut rng, &mut input);
        }
        check(&input, &mut screen, &mut stats);
    }
    // The valid encodings themselves must all decode.
    for bytes in &corpus {
        assert!(decode_client(bytes).is_ok() || decode_server(bytes).is_ok());
        check(bytes, &mut screen, &mut stats);
    }
    eprintln!(
        "fuzzed {} inputs in {:.2?}: {} decoded as client, {} as server, {} frame updates applied",
        inputs + corpus.len() as u64,
        start.elapsed(),
        stats[0],
        stats[1],
        stats[2]
    );
}
