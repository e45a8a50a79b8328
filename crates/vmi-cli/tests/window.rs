//! The native terminal on a screen: `vmi terminal` opens its window on an X server with no screen (Debian's
//! `Xvfb`, started by the test), shows the phone (the window's pixels, read back with `xwd`, are the phone's own
//! framebuffer at the window's scale), types into Notes from the X keyboard, and sleeps and wakes with F2. The X
//! input comes from `xdotool`, as a person's mouse and keys would.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use vmi_testkit::ChildGuard;

/// An X server of its own for the test, on the first free display from :90, gone when dropped.
struct Display {
    _server: ChildGuard,
    name: String,
}

fn display() -> Display {
    for n in 90..140 {
        if std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
            continue;
        }
        let name = format!(":{n}");
        let server = ChildGuard::spawn(
            Command::new("Xvfb")
                .args([name.as_str(), "-screen", "0", "800x800x24", "-nolisten", "tcp"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("Xvfb runs (scripts/setup installs xvfb)");
        let socket = format!("/tmp/.X11-unix/X{n}");
        wait_until(Duration::from_secs(10), "the X server listening", || std::path::Path::new(&socket).exists());
        return Display { _server: server, name };
    }
    panic!("no free X display between :90 and :139");
}

/// Runs `xdotool ARGS` on `display`; its output.
fn xdotool(display: &str, args: &[&str]) -> String {
    let out = Command::new("xdotool").env("DISPLAY", display).args(args).output().expect("xdotool runs");
    assert!(out.status.success(), "xdotool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The window's pixels as `(width, height, 0xRRGGBB per pixel)`, read with `xwd` (its format: a big-endian header,
/// a colour map, then ZPixmap rows of 32-bit pixels in the byte order the header says).
fn window_pixels(display: &str, window: &str) -> (usize, usize, Vec<u32>) {
    let out = Command::new("xwd").env("DISPLAY", display).args(["-silent", "-id", window]).output().expect("xwd runs");
    assert!(out.status.success(), "xwd: {}", String::from_utf8_lossy(&out.stderr));
    let b = out.stdout;
    let word = |i: usize| u32::from_be_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]) as usize;
    let (header, format, width, height) = (word(0), word(2), word(4), word(5));
    let (byte_order, bits, bytes_per_line, colours) = (word(7), word(11), word(12), word(19));
    assert_eq!((format, bits), (2, 32), "a 32-bit ZPixmap");
    let start = header + colours * 12;
    let pixels = (0..height)
        .flat_map(|y| (0..width).map(move |x| start + y * bytes_per_line + x * 4))
        .map(|i| {
            let p = [b[i], b[i + 1], b[i + 2], b[i + 3]];
            (if byte_order == 0 { u32::from_le_bytes(p) } else { u32::from_be_bytes(p) }) & 0x00ff_ffff
        })
        .collect();
    (width, height, pixels)
}

/// The phone's framebuffer as the site has it, `(width, height, 0xRRGGBB per pixel)`.
fn phone_pixels(up: &Up, user: &str) -> (usize, usize, Vec<u32>) {
    let (_, url) = up.sites.iter().find(|(id, _)| *id == placement(up).0).expect("the phone's site").clone();
    let png = up.get_bytes(&format!("{url}/v1/phones/{user}/screen.png")).expect("screen.png");
    let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    let pixels = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
        .collect();
    (info.width as usize, info.height as usize, pixels)
}

/// How many of the window's pixels differ from the phone's at the window's scale (every `shrink`-th pixel).
fn differing(window: &(usize, usize, Vec<u32>), phone: &(usize, usize, Vec<u32>)) -> usize {
    let shrink = phone.0 / window.0;
    assert!(
        shrink >= 1 && window.1 == phone.1 / shrink,
        "window {}x{}, phone {}x{}",
        window.0,
        window.1,
        phone.0,
        phone.1
    );
    (0..window.1)
        .flat_map(|y| (0..window.0).map(move |x| (x, y)))
        .filter(|&(x, y)| window.2[y * window.0 + x] != phone.2[y * shrink * phone.0 + x * shrink])
        .count()
}

/// Writes `pixels` (0xRRGGBB) as an RGB PNG.
fn save_png((width, height, pixels): &(usize, usize, Vec<u32>), path: &std::path::Path) {
    let file = std::fs::File::create(path).expect("png file");
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), *width as u32, *height as u32);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header().expect("png header");
    let rgb: Vec<u8> = pixels.iter().flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8]).collect();
    writer.write_image_data(&rgb).expect("png data");
}

#[test]
fn the_native_window_shows_the_phone_types_sleeps_and_wakes_on_an_x_display() {
    let data = scratch_dir("window");
    let up = up(&data, &["--no-proxy"]);
    let x = display();
    let _terminal = ChildGuard::spawn(
        up.vmi()
            .env("DISPLAY", &x.name)
            .args(["terminal", "--control", &up.control, "--ca", &up.ca_file, "--token-file", &up.token_file])
            .stdout(Stdio::null()),
    )
    .expect("vmi terminal starts");
    let window = xdotool(&x.name, &["search", "--sync", "--onlyvisible", "--name", "Seed VMI"]);
    let window = window.lines().next().expect("a window").to_owned();

    // It shows the phone: the window's pixels are the phone's framebuffer (once the first frames are in).
    wait_until(Duration::from_secs(30), "the window showing the phone's screen", || {
        differing(&window_pixels(&x.name, &window), &phone_pixels(&up, "demo")) == 0
    });
    let home = window_pixels(&x.name, &window);

    // Typing: a click on Notes (phone 274,1090 at the window's half scale), then keys from the X keyboard.
    // The window reads the mouse button once a frame: a press held a few frames, as a finger's tap.
    xdotool(
        &x.name,
        &["mousemove", "--window", &window, "137", "545", "mousedown", "1", "sleep", "0.15", "mouseup", "1"],
    );
    wait_until(Duration::from_secs(20), "Notes open in the window", || {
        let now = window_pixels(&x.name, &window);
        now.2 != home.2 && differing(&now, &phone_pixels(&up, "demo")) == 0
    });
    xdotool(&x.name, &["type", "--delay", "60", "hi there"]);
    let notes_url = |site: &str| format!("{}/v1/phones/demo/kv/notes.text", up.site(site));
    wait_until(Duration::from_secs(20), "the typed text in Notes", || {
        up.get(&notes_url(&placement(&up).0)).is_ok_and(|n| n.ends_with("hi there"))
    });
    wait_until(Duration::from_secs(30), "the window showing the typed text as the phone does", || {
        differing(&window_pixels(&x.name, &window), &phone_pixels(&up, "demo")) == 0
    });
    // What a person sees, kept for a look: the window as a PNG.
    let shots = scratch_dir("window-shots");
    save_png(&window_pixels(&x.name, &window), &shots.join("window-notes.png"));

    // F2 (held a few frames, as the window reads keys once a frame): the screen off (the title says so), and on
    // again with the phone's current screen.
    xdotool(&x.name, &["keydown", "F2", "sleep", "0.15", "keyup", "F2"]);
    wait_until(Duration::from_secs(10), "the window saying the phone is asleep", || {
        xdotool(&x.name, &["getwindowname", &window]).contains("asleep")
    });
    xdotool(&x.name, &["keydown", "F2", "sleep", "0.15", "keyup", "F2"]);
    wait_until(Duration::from_secs(10), "the window awake again", || {
        !xdotool(&x.name, &["getwindowname", &window]).contains("asleep")
    });
    wait_until(Duration::from_secs(20), "the woken window showing the phone's screen", || {
        differing(&window_pixels(&x.name, &window), &phone_pixels(&up, "demo")) == 0
    });
    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}
