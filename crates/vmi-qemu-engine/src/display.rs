//! The phone's screen, read from QEMU's own VNC server on a Unix socket (RFB 3.8, no authentication: the socket
//! lives in the phone's private directory). QEMU tracks damage in 16-pixel tiles and sends only changed
//! rectangles, and holds an incremental update request until something changed, so a static screen costs
//! nothing here; each update's rectangles become the phone's damage.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmi_engine::Rect;

use crate::error::QemuError;

/// Largest screen side the display channel accepts (a hostile QEMU could ask for gigabytes).
const MAX_SIDE: u32 = 4096;

/// Called when something of the phone changed on its own (screen, agent, process): the site looks at it.
pub type ActivityListener = Arc<dyn Fn() + Send + Sync>;

/// The screen as the display channel last saw it, with the damage not yet taken.
#[derive(Debug, Default)]
pub struct Screen {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// RGBA pixels, row-major.
    pub rgba: Vec<u8>,
    /// Rectangles changed since the phone last took them.
    pub damage: Vec<Rect>,
    /// Updates received (at least one means the first full frame is in).
    pub updates: u64,
    /// Why the channel ended, if it did.
    pub closed: Option<String>,
}

/// The shared screen and who to tell when it changes.
pub type SharedScreen = Arc<Mutex<Screen>>;

/// Opens the VNC socket at `path` (waiting up to `within` for QEMU to create it), negotiates a 32-bit RGBA pixel
/// format, and reads updates into `screen` on a thread of its own until QEMU closes the socket.
pub fn start(
    path: &Path,
    within: Duration,
    screen: SharedScreen,
    listener: Arc<Mutex<Option<ActivityListener>>>,
) -> Result<(), QemuError> {
    let mut stream = crate::qmp::connect_within(path, within, "VNC")?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(QemuError::io("VNC socket"))?;
    let (width, height) = handshake(&mut stream)?;
    {
        let mut s = lock(&screen);
        s.width = width;
        s.height = height;
        s.rgba = vec![0; width as usize * height as usize * 4];
    }
    // Updates come when the screen changes, which may be never: no timeout on the reading thread.
    stream.set_read_timeout(None).map_err(QemuError::io("VNC socket"))?;
    request(&mut stream, false, width, height)?;
    std::thread::Builder::new()
        .name("qemu-display".into())
        .spawn(move || {
            let end = read_updates(&mut stream, &screen, &listener);
            let why = match end {
                Ok(()) => "QEMU closed the display".to_owned(),
                Err(e) => e.to_string(),
            };
            tracing::debug!("display channel ended: {why}");
            lock(&screen).closed = Some(why);
            if let Some(tell) = lock(&listener).as_ref() {
                tell();
            }
        })
        .map_err(QemuError::io("starting the display thread"))?;
    Ok(())
}

/// Locks a mutex, taking the data even if a thread panicked while holding it (the screen stays usable).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn handshake(s: &mut UnixStream) -> Result<(u32, u32), QemuError> {
    let mut version = [0u8; 12];
    read(s, &mut version)?;
    if !version.starts_with(b"RFB ") {
        return Err(QemuError::Display(format!("not an RFB server: {:?}", String::from_utf8_lossy(&version))));
    }
    write(s, b"RFB 003.008\n")?;
    let mut count = [0u8; 1];
    read(s, &mut count)?;
    if count[0] == 0 {
        return Err(QemuError::Display("the VNC server refused the connection".into()));
    }
    let mut types = vec![0u8; count[0] as usize];
    read(s, &mut types)?;
    // 1: no authentication. The socket is in the phone's own directory, reachable by the site alone.
    if !types.contains(&1) {
        return Err(QemuError::Display(format!("the VNC server wants authentication ({types:?})")));
    }
    write(s, &[1])?;
    let mut result = [0u8; 4];
    read(s, &mut result)?;
    if u32::from_be_bytes(result) != 0 {
        return Err(QemuError::Display("VNC security handshake failed".into()));
    }
    write(s, &[1])?; // ClientInit: shared
    let mut init = [0u8; 24];
    read(s, &mut init)?;
    let width = u16::from_be_bytes([init[0], init[1]]) as u32;
    let height = u16::from_be_bytes([init[2], init[3]]) as u32;
    check_size(width, height)?;
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    if name_len > 4096 {
        return Err(QemuError::Display(format!("a desktop name of {name_len} bytes")));
    }
    let mut name = vec![0u8; name_len];
    read(s, &mut name)?;
    // SetPixelFormat: 32 bpp, depth 24, little-endian, true colour, red at bit 0, green 8, blue 16: bytes R G B x.
    let mut format = vec![0u8, 0, 0, 0, 32, 24, 0, 1];
    format.extend_from_slice(&255u16.to_be_bytes());
    format.extend_from_slice(&255u16.to_be_bytes());
    format.extend_from_slice(&255u16.to_be_bytes());
    format.extend_from_slice(&[0, 8, 16, 0, 0, 0]);
    write(s, &format)?;
    // SetEncodings: Raw (0) and DesktopSize (-223), so a mode change arrives as a new size.
    let mut encodings = vec![2u8, 0];
    encodings.extend_from_slice(&2u16.to_be_bytes());
    encodings.extend_from_slice(&0i32.to_be_bytes());
    encodings.extend_from_slice(&(-223i32).to_be_bytes());
    write(s, &encodings)?;
    Ok((width, height))
}

fn check_size(width: u32, height: u32) -> Result<(), QemuError> {
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(QemuError::Display(format!("a screen of {width}x{height} (at most {MAX_SIDE} a side)")));
    }
    Ok(())
}

fn request(s: &mut UnixStream, incremental: bool, width: u32, height: u32) -> Result<(), QemuError> {
    let mut msg = vec![3u8, incremental as u8, 0, 0, 0, 0];
    msg.extend_from_slice(&(width.min(65535) as u16).to_be_bytes());
    msg.extend_from_slice(&(height.min(65535) as u16).to_be_bytes());
    write(s, &msg)
}

fn read_updates(
    s: &mut UnixStream,
    screen: &SharedScreen,
    listener: &Mutex<Option<ActivityListener>>,
) -> Result<(), QemuError> {
    let mut row = Vec::new();
    loop {
        let mut kind = [0u8; 1];
        match s.read(&mut kind) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(QemuError::io("reading VNC")(e)),
        }
        match kind[0] {
            0 => {
                let mut head = [0u8; 3];
                read(s, &mut head)?;
                let rects = u16::from_be_bytes([head[1], head[2]]);
                let mut changed = Vec::new();
                for _ in 0..rects {
                    let mut r = [0u8; 12];
                    read(s, &mut r)?;
                    let x = u16::from_be_bytes([r[0], r[1]]) as u32;
                    let y = u16::from_be_bytes([r[2], r[3]]) as u32;
                    let w = u16::from_be_bytes([r[4], r[5]]) as u32;
                    let h = u16::from_be_bytes([r[6], r[7]]) as u32;
                    let encoding = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
                    match encoding {
                        0 => {
                            check_size(w, h)?;
                            // Read whole, then copied under the lock: a stalled QEMU never holds the screen.
                            row.resize(w as usize * h as usize * 4, 0);
                            read(s, &mut row)?;
                            let mut shared = lock(screen);
                            let (sw, sh) = (shared.width, shared.height);
                            for (line, pixels) in (0..h).zip(row.chunks_exact(w as usize * 4)) {
                                let yy = y + line;
                                if yy >= sh || x >= sw {
                                    continue;
                                }
                                let cols = w.min(sw - x) as usize;
                                let at = (yy as usize * sw as usize + x as usize) * 4;
                                let dst = &mut shared.rgba[at..at + cols * 4];
                                for (d, p) in dst.chunks_exact_mut(4).zip(pixels.chunks_exact(4)) {
                                    d.copy_from_slice(&[p[0], p[1], p[2], 255]);
                                }
                            }
                            changed.push(Rect::new(x, y, w, h));
                        }
                        -223 => {
                            check_size(w, h)?;
                            let mut shared = lock(screen);
                            shared.width = w;
                            shared.height = h;
                            shared.rgba = vec![0; w as usize * h as usize * 4];
                            changed.push(Rect::new(0, 0, w, h));
                        }
                        other => return Err(QemuError::Display(format!("unasked-for encoding {other}"))),
                    }
                }
                let (w, h) = {
                    let mut shared = lock(screen);
                    shared.updates += 1;
                    shared.damage.extend(changed);
                    (shared.width, shared.height)
                };
                request(s, true, w, h)?;
                if let Some(tell) = lock(listener).as_ref() {
                    tell();
                }
            }
            1 => {
                // Colour map entries: not used with a true-colour format, skipped.
                let mut head = [0u8; 5];
                read(s, &mut head)?;
                let n = u16::from_be_bytes([head[3], head[4]]) as usize;
                let mut skip = vec![0u8; n * 6];
                read(s, &mut skip)?;
            }
            2 => {} // bell
            3 => {
                let mut head = [0u8; 7];
                read(s, &mut head)?;
                let n = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
                if n > 1 << 20 {
                    return Err(QemuError::Display(format!("cut text of {n} bytes")));
                }
                let mut skip = vec![0u8; n];
                read(s, &mut skip)?;
            }
            other => return Err(QemuError::Display(format!("unknown server message {other}"))),
        }
    }
}

fn read(s: &mut UnixStream, buf: &mut [u8]) -> Result<(), QemuError> {
    s.read_exact(buf).map_err(QemuError::io("reading VNC"))
}

fn write(s: &mut UnixStream, buf: &[u8]) -> Result<(), QemuError> {
    s.write_all(buf).map_err(QemuError::io("writing VNC"))
}
