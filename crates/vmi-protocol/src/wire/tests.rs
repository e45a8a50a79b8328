use proptest::prelude::*;

use super::*;
use crate::message::{MAX_PHONE_SIDE, PhoneScreen};

fn every_client_message() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Hello { version: 1, device_token: "tok-ü".into(), resume: None, asleep: false, display: None },
        ClientMessage::Hello {
            version: 1,
            device_token: String::new(),
            resume: Some(Resume { last_frame_seq: 7, screen_hash: u64::MAX }),
            asleep: true,
            display: None,
        },
        ClientMessage::Hello {
            version: 3,
            device_token: "t".into(),
            resume: None,
            asleep: false,
            display: Some(Display { width: 390, height: 844, density: 300 }),
        },
        ClientMessage::Hello { version: 3, device_token: "t".into(), resume: None, asleep: true, display: None },
        ClientMessage::Join { version: 4, device_token: "tok".into(), ticket: "0f1e2d".into() },
        ClientMessage::Prepared,
        ClientMessage::Display(Display { width: 844, height: 390, density: 300 }),
        ClientMessage::Input { seq: 5, input: Input::Touch { phase: TouchPhase::Move, x: 9, y: 8, pointer: 1 } },
        ClientMessage::Input { seq: 6, input: Input::Key { code: 10, text: None } },
        ClientMessage::Input { seq: 1, input: Input::Touch { phase: TouchPhase::Down, x: 0, y: 1279, pointer: 0 } },
        ClientMessage::Input { seq: 2, input: Input::Touch { phase: TouchPhase::Move, x: 719, y: 5, pointer: 0 } },
        ClientMessage::Input {
            seq: 3,
            input: Input::Touch { phase: TouchPhase::Up, x: u16::MAX, y: u16::MAX, pointer: 0 },
        },
        ClientMessage::Input { seq: 4, input: Input::Key { code: 0, text: Some('😀') } },
        ClientMessage::Input { seq: u64::MAX, input: Input::Key { code: 2, text: None } },
        ClientMessage::FrameAck { seq: 9 },
        ClientMessage::Sleep,
        ClientMessage::Wake,
        ClientMessage::Ping { nonce: 0xDEAD_BEEF },
    ]
}

fn every_server_message() -> Vec<ServerMessage> {
    let codes = ErrorCode::ALL;
    let mut all = vec![
        ServerMessage::Screen { width: 1688, height: 780 },
        ServerMessage::Clipboard { text: "héllo € 日本".into() },
        ServerMessage::Prepare { url: "wss://site-b.example/v1/terminal".into(), ticket: "0f1e2d".into() },
        ServerMessage::Joined,
        ServerMessage::Welcome { version: 1, width: 720, height: 1280, last_input_seq: 3, resumed: true },
        ServerMessage::Welcome { version: 1, width: 0, height: 0, last_input_seq: 0, resumed: false },
        ServerMessage::FrameUpdate { seq: 1, tiles: vec![] },
        ServerMessage::FrameUpdate {
            seq: 2,
            tiles: vec![
                Tile { x: 0, y: 0, w: 64, h: 64, data: TileData::Solid(0xFF30_2010) },
                Tile { x: 64, y: 0, w: 2, h: 1, data: TileData::Raw(vec![1, 2, 3, 4, 5, 6, 7, 8]) },
                Tile { x: 704, y: 1216, w: 16, h: 64, data: TileData::Lz4(vec![0x1f, 0, 1, 0, 0]) },
                Tile { x: 0, y: 100, w: 720, h: 900, data: TileData::Copy { src_x: 0, src_y: 140 } },
            ],
        },
        ServerMessage::InputAck { seq: 5 },
        ServerMessage::InputDurable { seq: 5 },
        ServerMessage::Notification { title: "Alice".into(), body: "Lunch? 🍕".into(), at_ms: 1_700_000_000_000 },
        ServerMessage::Redirect { url: "wss://site-b.example/ws".into() },
        ServerMessage::Pong { nonce: 42 },
    ];
    all.extend(codes.into_iter().map(|code| ServerMessage::Error { code, message: format!("{code:?}") }));
    all
}

#[test]
fn every_variant_round_trips() {
    for msg in every_client_message() {
        let bytes = encode_client(&msg);
        assert_eq!(decode_client(&bytes), Ok(msg.clone()), "{bytes:02x?}");
    }
    for msg in every_server_message() {
        let bytes = encode_server(&msg);
        assert_eq!(decode_server(&bytes), Ok(msg.clone()), "{bytes:02x?}");
    }
}

/// The examples of docs/PROTOCOL.md ("Example bytes"), byte for byte.
#[test]
fn documented_example_bytes() {
    let hex = |s: &str| s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect::<Vec<u8>>();
    let client = [
        (ClientMessage::Ping { nonce: 5 }, "06 05 00 00 00 00 00 00 00"),
        (ClientMessage::Sleep, "04"),
        (
            ClientMessage::Input {
                seq: 1,
                input: Input::Touch { phase: TouchPhase::Down, x: 100, y: 200, pointer: 0 },
            },
            "02 01 00 00 00 00 00 00 00 00 00 64 00 C8 00",
        ),
        (
            ClientMessage::Input { seq: 2, input: Input::Key { code: 0, text: Some('é') } },
            "02 02 00 00 00 00 00 00 00 01 00 01 E9 00 00 00",
        ),
        (
            ClientMessage::Hello { version: 1, device_token: "ab".into(), resume: None, asleep: false, display: None },
            "01 01 00 02 00 61 62 00 00",
        ),
    ];
    for (msg, bytes) in client {
        assert_eq!(encode_client(&msg), hex(bytes), "{msg:?}");
        assert_eq!(decode_client(&hex(bytes)), Ok(msg));
    }
    let server = [
        (
            ServerMessage::FrameUpdate {
                seq: 1,
                tiles: vec![Tile {
                    x: 0,
                    y: 0,
                    w: 64,
                    h: 64,
                    data: TileData::Solid(u32::from_le_bytes([0x10, 0x20, 0x30, 0xFF])),
                }],
            },
            "82 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 40 00 40 00 00 10 20 30 FF",
        ),
        (ServerMessage::Error { code: ErrorCode::BadMessage, message: "x".into() }, "87 03 01 00 78"),
        (
            ServerMessage::FrameUpdate {
                seq: 2,
                tiles: vec![Tile { x: 0, y: 100, w: 720, h: 900, data: TileData::Copy { src_x: 0, src_y: 140 } }],
            },
            "82 02 00 00 00 00 00 00 00 01 00 00 00 00 00 64 00 D0 02 84 03 03 00 00 8C 00",
        ),
    ];
    for (msg, bytes) in server {
        assert_eq!(encode_server(&msg), hex(bytes), "{msg:?}");
        assert_eq!(decode_server(&hex(bytes)), Ok(msg));
    }
}

#[test]
fn empty_and_unknown_types() {
    assert_eq!(decode_client(&[]), Err(ProtocolError::Empty));
    assert_eq!(decode_server(&[]), Err(ProtocolError::Empty));
    // Each direction knows only its own tags.
    assert_eq!(decode_client(&[0x81]), Err(ProtocolError::UnknownType(0x81)));
    assert_eq!(decode_server(&[0x04]), Err(ProtocolError::UnknownType(0x04)));
    assert_eq!(decode_client(&[0x00]), Err(ProtocolError::UnknownType(0x00)));
    assert_eq!(decode_client(&[0x0a]), Err(ProtocolError::UnknownType(0x0a)));
    assert_eq!(decode_server(&[0x8d]), Err(ProtocolError::UnknownType(0x8d)));
}

#[test]
fn truncated_messages_say_where() {
    assert_eq!(
        decode_client(&[PING, 1, 2, 3]),
        Err(ProtocolError::Truncated { what: "ping nonce", needed: 8, available: 3 })
    );
    // Every strict prefix of every message is Truncated, never anything else.
    for msg in every_client_message() {
        let bytes = encode_client(&msg);
        for cut in 1..bytes.len() {
            assert!(
                matches!(decode_client(&bytes[..cut]), Err(ProtocolError::Truncated { .. })),
                "{msg:?} cut at {cut}: {:?}",
                decode_client(&bytes[..cut])
            );
        }
    }
    for msg in every_server_message() {
        let bytes = encode_server(&msg);
        for cut in 1..bytes.len() {
            assert!(matches!(decode_server(&bytes[..cut]), Err(ProtocolError::Truncated { .. })), "{msg:?} at {cut}");
        }
    }
    // A string whose length runs past the end.
    assert_eq!(
        decode_server(&[REDIRECT, 10, 0, b'w', b's']),
        Err(ProtocolError::Truncated { what: "redirect url", needed: 10, available: 2 })
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode_client(&ClientMessage::Wake);
    bytes.extend([0, 0]);
    assert_eq!(decode_client(&bytes), Err(ProtocolError::TrailingBytes(2)));
    let mut bytes = encode_server(&ServerMessage::Pong { nonce: 1 });
    bytes.push(9);
    assert_eq!(decode_server(&bytes), Err(ProtocolError::TrailingBytes(1)));
}

#[test]
fn oversize_lengths_are_refused_before_reading() {
    // String over 4096 bytes: refused on the length alone, the bytes need not be there.
    let mut msg = vec![REDIRECT];
    msg.extend(4097u16.to_le_bytes());
    assert_eq!(
        decode_server(&msg),
        Err(ProtocolError::TooLarge { what: "redirect url", limit: MAX_STRING_LEN, found: 4097 })
    );
    // Device token over 512.
    let mut msg = vec![HELLO, 1, 0];
    msg.extend(513u16.to_le_bytes());
    msg.extend([b'a'; 513]);
    msg.extend([0, 0]);
    assert_eq!(
        decode_client(&msg),
        Err(ProtocolError::TooLarge { what: "device token", limit: MAX_TOKEN_LEN, found: 513 })
    );
    // A whole message over 16 MiB.
    let huge = vec![0u8; MAX_MESSAGE_LEN + 1];
    assert_eq!(
        decode_server(&huge),
        Err(ProtocolError::TooLarge { what: "message", limit: MAX_MESSAGE_LEN, found: MAX_MESSAGE_LEN + 1 })
    );
    // Too many tiles, and more tiles than the bytes can hold.
    let update = |count: u32, extra: &[u8]| {
        let mut m = vec![FRAME_UPDATE];
        m.extend(1u64.to_le_bytes());
        m.extend(count.to_le_bytes());
        m.extend(extra);
        m
    };
    assert_eq!(
        decode_server(&update(65537, &[])),
        Err(ProtocolError::TooLarge { what: "tile count", limit: MAX_TILES, found: 65537 })
    );
    assert_eq!(
        decode_server(&update(65536, &[0; 20])),
        Err(ProtocolError::Truncated { what: "tiles", needed: 65536 * 13, available: 20 })
    );
    // Tile sides: 0 is a bad value, over 4096 too large.
    let tile = |w: u16, h: u16, enc: &[u8]| {
        let mut t = vec![0, 0, 0, 0];
        t.extend(w.to_le_bytes());
        t.extend(h.to_le_bytes());
        t.extend(enc);
        update(1, &t)
    };
    let solid = [TILE_SOLID, 1, 2, 3, 4];
    assert_eq!(decode_server(&tile(0, 4, &solid)), Err(ProtocolError::BadValue { what: "tile width", value: 0 }));
    assert_eq!(decode_server(&tile(4, 0, &solid)), Err(ProtocolError::BadValue { what: "tile height", value: 0 }));
    assert_eq!(
        decode_server(&tile(4097, 4, &solid)),
        Err(ProtocolError::TooLarge { what: "tile width", limit: 4096, found: 4097 })
    );
    assert!(decode_server(&tile(4096, 4096, &solid)).is_ok());
    // Raw length must be w*h*4; LZ4 length at most the LZ4 bound.
    let mut raw = vec![TILE_RAW];
    raw.extend(15u32.to_le_bytes());
    raw.extend([0; 15]);
    assert_eq!(decode_server(&tile(2, 2, &raw)), Err(ProtocolError::BadValue { what: "raw tile length", value: 15 }));
    let mut lz4 = vec![TILE_LZ4];
    lz4.extend(33u32.to_le_bytes());
    assert_eq!(
        decode_server(&tile(2, 2, &lz4)),
        Err(ProtocolError::TooLarge { what: "lz4 tile data", limit: 32, found: 33 })
    );
    // A huge LZ4 length that is within the bound but not in the message.
    let mut lz4 = vec![TILE_LZ4];
    lz4.extend(1_000_000u32.to_le_bytes());
    assert_eq!(
        decode_server(&tile(1000, 250, &lz4)),
        Err(ProtocolError::Truncated { what: "lz4 tile data", needed: 1_000_000, available: 0 })
    );
}

#[test]
fn bad_utf8_and_bad_values() {
    assert_eq!(decode_server(&[REDIRECT, 2, 0, 0xC3, 0x28]), Err(ProtocolError::BadUtf8 { what: "redirect url" }));
    assert_eq!(decode_client(&[HELLO, 1, 0, 1, 0, 0xFF, 0, 0]), Err(ProtocolError::BadUtf8 { what: "device token" }));
    // bool and Option bytes other than 0 and 1.
    assert_eq!(
        decode_client(&[HELLO, 1, 0, 0, 0, 0, 2]),
        Err(ProtocolError::BadValue { what: "Hello asleep", value: 2 })
    );
    assert_eq!(decode_client(&[HELLO, 1, 0, 0, 0, 7]), Err(ProtocolError::BadValue { what: "Hello resume", value: 7 }));
    // Input kind, touch phase, char not a scalar value.
    let input = |rest: &[u8]| [&[INPUT, 1, 0, 0, 0, 0, 0, 0, 0][..], rest].concat();
    assert_eq!(decode_client(&input(&[3])), Err(ProtocolError::BadValue { what: "input kind", value: 3 }));
    assert_eq!(
        decode_client(&input(&[0, 3, 0, 0, 0, 0])),
        Err(ProtocolError::BadValue { what: "touch phase", value: 3 })
    );
    assert_eq!(
        decode_client(&input(&[1, 0, 1, 0x00, 0xD8, 0, 0])),
        Err(ProtocolError::BadValue { what: "key text char", value: 0xD800 })
    );
    assert_eq!(
        decode_client(&input(&[1, 0, 1, 0x00, 0x00, 0x11, 0])),
        Err(ProtocolError::BadValue { what: "key text char", value: 0x11_0000 })
    );
    // Error codes 1..=6 only; tile encodings 0..=3 only.
    assert_eq!(decode_server(&[ERROR, 0, 0, 0]), Err(ProtocolError::BadValue { what: "error code", value: 0 }));
    assert_eq!(decode_server(&[ERROR, 7, 0, 0]), Err(ProtocolError::BadValue { what: "error code", value: 7 }));
    let mut m = vec![FRAME_UPDATE, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    m.extend([0, 0, 0, 0, 1, 0, 1, 0, 4, 0, 0, 0, 0]);
    assert_eq!(decode_server(&m), Err(ProtocolError::BadValue { what: "tile encoding", value: 4 }));
}

#[test]
fn unsupported_versions() {
    let hello = encode_client(&ClientMessage::Hello {
        version: 5,
        device_token: "t".into(),
        resume: None,
        asleep: false,
        display: None,
    });
    let err = decode_client(&hello).unwrap_err();
    assert_eq!(err, ProtocolError::UnsupportedVersion { found: 5, supported: 1..=4 });
    // Version 1 is still spoken (a terminal that forgets inputs once applied).
    let old = encode_client(&ClientMessage::Hello {
        version: 1,
        device_token: "t".into(),
        resume: None,
        asleep: false,
        display: None,
    });
    assert!(decode_client(&old).is_ok());
    assert_eq!(err.error_code(), ErrorCode::Version);
    // The version is checked before the rest, whose layout may differ in other versions.
    assert_eq!(
        decode_client(&[HELLO, 0, 0, 0xFF]),
        Err(ProtocolError::UnsupportedVersion { found: 0, supported: 1..=4 })
    );
    let welcome =
        encode_server(&ServerMessage::Welcome { version: 9, width: 1, height: 1, last_input_seq: 0, resumed: false });
    assert_eq!(decode_server(&welcome), Err(ProtocolError::UnsupportedVersion { found: 9, supported: 1..=4 }));
    assert_eq!(check_version(PROTOCOL_VERSION), Ok(()));
    assert_eq!(ProtocolError::Empty.error_code(), ErrorCode::BadMessage);
}

#[test]
fn long_strings_are_cut_at_a_char_boundary() {
    let body = "é".repeat(3000); // 6000 bytes
    let msg = ServerMessage::Notification { title: "t".into(), body: body.clone(), at_ms: 0 };
    let Ok(ServerMessage::Notification { body: got, .. }) = decode_server(&encode_server(&msg)) else {
        panic!("does not decode");
    };
    assert_eq!(got, "é".repeat(2048));
    let token = format!("x{}", "é".repeat(300)); // 601 bytes; 512 would split an 'é'
    let msg = ClientMessage::Hello { version: 1, device_token: token, resume: None, asleep: false, display: None };
    let Ok(ClientMessage::Hello { device_token, .. }) = decode_client(&encode_client(&msg)) else {
        panic!("does not decode");
    };
    assert_eq!(device_token.len(), 511);
}

fn arb_string(max_chars: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..=max_chars).prop_map(|cs| cs.into_iter().collect())
}

/// Any valid terminal message.
pub(crate) fn arb_client() -> impl Strategy<Value = ClientMessage> {
    let phase = prop_oneof![Just(TouchPhase::Down), Just(TouchPhase::Move), Just(TouchPhase::Up)];
    let input = prop_oneof![
        (phase, any::<u16>(), any::<u16>(), any::<u8>()).prop_map(|(phase, x, y, pointer)| Input::Touch {
            phase,
            x,
            y,
            pointer
        }),
        (any::<u8>(), any::<Option<char>>()).prop_map(|(code, text)| Input::Key { code, text }),
    ];
    let resume = any::<Option<(u64, u64)>>()
        .prop_map(|r| r.map(|(last_frame_seq, screen_hash)| Resume { last_frame_seq, screen_hash }));
    prop_oneof![
        (arb_string(100), resume, any::<bool>(), any::<Option<(u16, u16, u16)>>()).prop_map(
            |(device_token, resume, asleep, display)| ClientMessage::Hello {
                version: PROTOCOL_VERSION,
                device_token,
                resume,
                asleep,
                display: display.map(|(width, height, density)| Display { width, height, density }),
            }
        ),
        Just(ClientMessage::Prepared),
        (arb_string(100), arb_string(64)).prop_map(|(device_token, ticket)| ClientMessage::Join {
            version: PROTOCOL_VERSION,
            device_token,
            ticket
        }),
        any::<(u16, u16, u16)>().prop_map(|(width, height, density)| ClientMessage::Display(Display {
            width,
            height,
            density
        })),
        (any::<u64>(), input).prop_map(|(seq, input)| ClientMessage::Input { seq, input }),
        any::<u64>().prop_map(|seq| ClientMessage::FrameAck { seq }),
        Just(ClientMessage::Sleep),
        Just(ClientMessage::Wake),
        any::<u64>().prop_map(|nonce| ClientMessage::Ping { nonce }),
    ]
}

fn arb_tile() -> impl Strategy<Value = Tile> {
    (any::<u16>(), any::<u16>(), 1u16..=9, 1u16..=9, 0u8..4, any::<u32>()).prop_flat_map(|(x, y, w, h, kind, c)| {
        let n = usize::from(w) * usize::from(h) * 4;
        let data = match kind {
            0 => Just(TileData::Solid(c)).boxed(),
            1 => proptest::collection::vec(any::<u8>(), 0..=lz4_max_len(n)).prop_map(TileData::Lz4).boxed(),
            2 => Just(TileData::Copy { src_x: c as u16, src_y: (c >> 16) as u16 }).boxed(),
            _ => proptest::collection::vec(any::<u8>(), n).prop_map(TileData::Raw).boxed(),
        };
        data.prop_map(move |data| Tile { x, y, w, h, data })
    })
}

/// Any valid site message.
pub(crate) fn arb_server() -> impl Strategy<Value = ServerMessage> {
    let code = prop_oneof![
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::Version),
        Just(ErrorCode::BadMessage),
        Just(ErrorCode::NotHere),
        Just(ErrorCode::PhoneDown),
        Just(ErrorCode::Internal),
    ];
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u64>(), any::<bool>()).prop_map(
            |(width, height, last_input_seq, resumed)| {
                ServerMessage::Welcome { version: PROTOCOL_VERSION, width, height, last_input_seq, resumed }
            }
        ),
        (any::<u64>(), proptest::collection::vec(arb_tile(), 0..6))
            .prop_map(|(seq, tiles)| ServerMessage::FrameUpdate { seq, tiles }),
        any::<u64>().prop_map(|seq| ServerMessage::InputAck { seq }),
        any::<u64>().prop_map(|seq| ServerMessage::InputDurable { seq }),
        (arb_string(60), arb_string(200), any::<u64>()).prop_map(|(title, body, at_ms)| ServerMessage::Notification {
            title,
            body,
            at_ms
        }),
        arb_string(100).prop_map(|url| ServerMessage::Redirect { url }),
        any::<u64>().prop_map(|nonce| ServerMessage::Pong { nonce }),
        any::<(u16, u16)>().prop_map(|(width, height)| ServerMessage::Screen { width, height }),
        arb_string(300).prop_map(|text| ServerMessage::Clipboard { text }),
        (arb_string(100), arb_string(64)).prop_map(|(url, ticket)| ServerMessage::Prepare { url, ticket }),
        Just(ServerMessage::Joined),
        (code, arb_string(100)).prop_map(|(code, message)| ServerMessage::Error { code, message }),
    ]
}

#[test]
fn a_second_finger_is_its_own_kind_and_the_first_never_is() {
    let first =
        ClientMessage::Input { seq: 1, input: Input::Touch { phase: TouchPhase::Down, x: 1, y: 2, pointer: 0 } };
    let second =
        ClientMessage::Input { seq: 1, input: Input::Touch { phase: TouchPhase::Down, x: 1, y: 2, pointer: 1 } };
    let (a, b) = (encode_client(&first), encode_client(&second));
    assert_eq!(b.len(), a.len() + 1, "one byte more, for the pointer");
    // A pointer-kind touch naming finger 0 is not canonical.
    let mut forged = b.clone();
    *forged.last_mut().expect("bytes") = 0;
    assert!(decode_client(&forged).is_err());
}

/// The version-3 example bytes of docs/PROTOCOL.md (tests/browser/unit.mjs checks the browser's codec on the same).
#[test]
fn version_3_example_bytes() {
    let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02X}")).collect::<Vec<_>>().join(" ");
    let display = Some(Display { width: 390, height: 844, density: 300 });
    let hello = ClientMessage::Hello { version: 3, device_token: "ab".into(), resume: None, asleep: false, display };
    assert_eq!(hex(encode_client(&hello)), "01 03 00 02 00 61 62 00 00 01 86 01 4C 03 2C 01");
    let rotated = ClientMessage::Display(Display { width: 390, height: 844, density: 300 });
    assert_eq!(hex(encode_client(&rotated)), "07 86 01 4C 03 2C 01");
    let second = Input::Touch { phase: TouchPhase::Move, x: 1, y: 2, pointer: 1 };
    assert_eq!(
        hex(encode_client(&ClientMessage::Input { seq: 4, input: second })),
        "02 04 00 00 00 00 00 00 00 02 01 01 00 02 00 01"
    );
    assert_eq!(hex(encode_server(&ServerMessage::Screen { width: 1688, height: 780 })), "89 98 06 0C 03");
    assert_eq!(hex(encode_server(&ServerMessage::Clipboard { text: "hi".into() })), "8A 02 00 68 69");
}

#[test]
fn a_version_2_hello_has_no_display_field() {
    let display = Some(Display { width: 390, height: 844, density: 300 });
    let v2 = ClientMessage::Hello { version: 2, device_token: "t".into(), resume: None, asleep: false, display };
    let decoded = decode_client(&encode_client(&v2)).expect("decodes");
    assert_eq!(
        decoded,
        ClientMessage::Hello { version: 2, device_token: "t".into(), resume: None, asleep: false, display: None }
    );
}

#[test]
fn a_display_maps_to_a_sharp_bounded_phone_screen() {
    let phone = Display { width: 390, height: 844, density: 300 }.phone_screen();
    assert_eq!(phone, PhoneScreen { width: 780, height: 1688, density: 200 });
    let rotated = Display { width: 844, height: 390, density: 300 }.phone_screen();
    assert_eq!((rotated.width, rotated.height, rotated.density), (1688, 780, 200));
    let desktop = Display { width: 337, height: 600, density: 100 }.phone_screen();
    assert_eq!((desktop.width, desktop.height, desktop.density), (337, 600, 100));
    let huge = Display { width: 4096, height: 2160, density: 200 }.phone_screen();
    assert_eq!(huge.width, MAX_PHONE_SIDE);
    assert!(Display { width: 10, height: 844, density: 300 }.check().unwrap_err().contains("10x844"));
    assert!(Display { width: 390, height: 844, density: 0 }.check().unwrap_err().contains("density 0"));
}

proptest! {
    #[test]
    fn client_messages_round_trip(msg in arb_client()) {
        let bytes = encode_client(&msg);
        prop_assert_eq!(decode_client(&bytes), Ok(msg));
    }

    #[test]
    fn server_messages_round_trip(msg in arb_server()) {
        let bytes = encode_server(&msg);
        prop_assert_eq!(decode_server(&bytes), Ok(msg));
    }

    /// Arbitrary bytes never panic, and whatever decodes re-encodes to the same bytes.
    #[test]
    fn arbitrary_bytes_decode_canonically(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(msg) = decode_client(&bytes) {
            prop_assert_eq!(encode_client(&msg), bytes.clone());
        }
        if let Ok(msg) = decode_server(&bytes) {
            prop_assert_eq!(encode_server(&msg), bytes);
        }
    }

    /// Mutated valid messages never panic, and whatever decodes is canonical.
    #[test]
    fn mutated_messages_decode_canonically(msg in arb_server(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = encode_server(&msg);
        let at = at % bytes.len();
        bytes[at] = byte;
        if let Ok(msg) = decode_server(&bytes) {
            prop_assert_eq!(encode_server(&msg), bytes);
        }
    }
}

#[test]
fn close_codes_stand_for_their_errors() {
    for code in ErrorCode::ALL {
        assert_eq!(code.close_code(), 4000 + u16::from(code.wire()));
        assert_eq!(ErrorCode::from_close_code(code.close_code()), Some(code));
    }
    for other in [1000, 1001, 1005, 4000, 4007] {
        assert_eq!(ErrorCode::from_close_code(other), None, "{other}");
    }
}
