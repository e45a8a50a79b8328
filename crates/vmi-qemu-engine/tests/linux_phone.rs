//! A real Linux phone under QEMU, through the engine contract alone: it boots Debian's kernel and the image's
//! session, a typed shell command writes a file the guest agent reads back, a notification raised in the guest
//! reaches the host, a snapshot restored in a new QEMU still has the file and the shell, and a QEMU killed from
//! outside marks its phone crashed. The image is built from Debian's packages by scripts/build-linux-image (its
//! parts cached by the script).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use vmi_engine::{Engine, Event, KeyCode, SnapshotRequest, VirtualPhone, VmConfig, VmStatus};
use vmi_qemu_engine::{QemuEngine, QemuPhone, Settings, image};

/// Under TCG on two cores the session takes some seconds; this bounds it generously.
const SESSION_WITHIN: Duration = Duration::from_secs(180);

fn image_bytes() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let work = vmi_testkit::scratch_dir("linux-image");
        let bytes = image::build(image::Manifest { memory_mib: 384, ..image::Manifest::default() }, &work)
            .unwrap_or_else(|e| panic!("building the Linux image: {e}"));
        let _ = std::fs::remove_dir_all(work);
        bytes
    })
}

/// One Linux phone test at a time: two guests under TCG on two cores starve each other's sessions.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn engine(name: &str) -> (QemuEngine, vmi_engine::ImageHash, std::path::PathBuf) {
    let dir = vmi_testkit::scratch_dir(name);
    let mut settings = Settings::under(&dir);
    settings.run_dir = dir.join("run");
    let engine = QemuEngine::new(settings).expect("engine");
    let info = engine.load_image(image_bytes()).expect("the image loads");
    assert_eq!(info.engine, "qemu");
    (engine, info.hash, dir)
}

fn type_text(phone: &mut dyn VirtualPhone, text: &str) {
    for c in text.chars() {
        let event = if c == '\n' { Event::Key { code: KeyCode::Enter, text: None } } else { Event::text(c) };
        phone.deliver(event).expect("key delivered");
    }
}

/// Waits for the guest to have written `path` with `want` (the shell runs at its own pace under TCG).
fn wait_file(phone: &QemuPhone, path: &str, want: &[u8]) {
    let by = Instant::now() + Duration::from_secs(60);
    loop {
        match phone.read_guest_file(path, Duration::from_secs(10)) {
            Ok(bytes) if bytes == want => return,
            other if Instant::now() > by => panic!("{path} never held {want:?}: last {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

fn save_png(frame: &vmi_engine::Frame<'_>, name: &str) {
    let path = std::env::temp_dir().join(name);
    let file = std::fs::File::create(&path).expect("png file");
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), frame.width, frame.height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header().and_then(|mut w| w.write_image_data(frame.rgba)).expect("png written");
    eprintln!("screen saved to {}", path.display());
}

#[test]
fn a_linux_phone_boots_types_notifies_snapshots_restores_and_crashes_alone() {
    let _one = one_at_a_time();
    let (engine, hash, dir) = engine("linux-phone");
    let config = VmConfig::default();
    let mut phone = engine.boot(&hash, &config, 0).expect("the phone boots");
    let activity = Arc::new(AtomicUsize::new(0));
    let seen = activity.clone();
    phone.set_activity_listener(Arc::new(move || {
        seen.fetch_add(1, Ordering::SeqCst);
    }));
    ready(&mut phone);
    eprintln!("accel: {:?}", phone.accel());
    // Run as root, the engine starts each QEMU as its own unprivileged user.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", phone.pid())).expect("QEMU's status");
        let uid = status.lines().find(|l| l.starts_with("Uid:")).expect("a Uid line");
        assert!(!uid.split_whitespace().skip(1).any(|id| id == "0"), "QEMU runs as root: {uid}");
        // Its memory cap: guest RAM and QEMU's own share, in its cgroup (v2 memory.max or v1 limit_in_bytes).
        let dirs = phone.cgroup_dirs();
        assert!(!dirs.is_empty(), "root puts QEMU in a cgroup of its own");
        let procs = std::fs::read_to_string(dirs[0].join("cgroup.procs")).expect("the cgroup's processes");
        assert!(procs.lines().any(|p| p == phone.pid().to_string()), "QEMU is in its cgroup: {procs}");
        let cap = ["memory.max", "memory.limit_in_bytes"]
            .iter()
            .find_map(|f| std::fs::read_to_string(dirs[0].join(f)).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("a memory cap");
        assert!(((384 << 20)..=((384 + 512) << 20)).contains(&cap), "a cap of guest RAM and a little more: {cap}");
    }

    // The screen was drawn (the prompt, `ready`), and the listener heard of it.
    assert!(activity.load(Ordering::SeqCst) > 0, "the activity listener was called");

    type_text(&mut phone, "echo hello > hello.txt && cat hello.txt\n");
    wait_file(&phone, "/home/phone/hello.txt", b"hello\n");
    // What the shell echoed reaches the screen: the frame has damage after the command.
    std::thread::sleep(Duration::from_millis(500));
    save_png(&phone.frame().expect("frame"), "linux-phone-hello.png");

    type_text(&mut phone, "notify-send 'Build done' 'all green'\n");
    let by = Instant::now() + Duration::from_secs(60);
    let mut raised = Vec::new();
    while Instant::now() < by && raised.is_empty() {
        raised = phone.take_notifications();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(raised.first().map(|n| (n.title.as_str(), n.body.as_str())), Some(("Build done", "all green")));

    // The guest tells the host when it is idle: quiet at its prompt, busy while a loop runs (and the site hears
    // of it as activity: a guest that changes by itself gets recorded), quiet again once the loop ends.
    assert!(phone.wait_idle(true, Duration::from_secs(60)), "the guest never said it was idle");
    let before = activity.load(Ordering::SeqCst);
    type_text(&mut phone, "timeout 8 sh -c 'while :; do :; done'\n");
    assert!(phone.wait_idle(false, Duration::from_secs(60)), "the guest never said it was busy");
    assert!(activity.load(Ordering::SeqCst) > before, "a busy guest is activity");
    assert!(phone.wait_idle(true, Duration::from_secs(60)), "the guest never said it was idle again");

    // A snapshot, restored in a new QEMU: the file, and the shell's history, are still there.
    let full = phone.snapshot(SnapshotRequest::Full).expect("full snapshot");
    type_text(&mut phone, "echo more >> hello.txt\n");
    wait_file(&phone, "/home/phone/hello.txt", b"hello\nmore\n");
    let delta = phone.snapshot(SnapshotRequest::Incremental).expect("incremental snapshot");
    assert_eq!(delta.parent, Some(full.id));
    assert!(delta.bytes.len() < full.bytes.len() / 4, "{} vs {}", delta.bytes.len(), full.bytes.len());
    eprintln!("full snapshot {} bytes, incremental {} bytes", full.bytes.len(), delta.bytes.len());
    drop(phone);

    let started = Instant::now();
    let mut back =
        engine.restore_phone(&hash, &[&full.bytes, &delta.bytes], &config, false).expect("the chain restores");
    eprintln!("restored in {:?}", started.elapsed());
    wait_file(&back, "/home/phone/hello.txt", b"hello\nmore\n");
    // The shell's history: the up arrow brings back the last command, which appends once more.
    back.deliver(Event::Key { code: KeyCode::Up, text: None }).expect("up");
    back.deliver(Event::Key { code: KeyCode::Enter, text: None }).expect("enter");
    wait_file(&back, "/home/phone/hello.txt", b"hello\nmore\nmore\n");

    // The web browser renders a page: its background colour (#f4f1ea) fills the screen, drawn by dillo through
    // Xwayland inside the kiosk compositor.
    type_text(&mut back, "dillo /usr/share/seed/welcome.html &\n");
    let by = Instant::now() + Duration::from_secs(120);
    loop {
        let frame = back.frame().expect("frame");
        let page = frame.rgba.chunks_exact(4).filter(|p| p[..3] == [0xf4, 0xf1, 0xea]).count();
        if page > frame.rgba.len() / 4 / 2 {
            save_png(&frame, "linux-phone-dillo.png");
            break;
        }
        assert!(Instant::now() < by, "the browser never showed the page ({page} pixels of its colour)");
        std::thread::sleep(Duration::from_millis(250));
    }

    // QEMU killed from outside: this phone, and only it, is crashed.
    let other = engine.boot(&hash, &config, 0).expect("a second phone");
    // SAFETY: kill(2) with a pid of a child this test started.
    unsafe { libc::kill(back.pid() as i32, libc::SIGKILL) };
    let by = Instant::now() + Duration::from_secs(10);
    while back.fire_due_timers().is_ok() && Instant::now() < by {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(matches!(back.status(), VmStatus::Crashed { .. }), "{:?}", back.status());
    assert!(back.deliver(Event::text('x')).is_err());
    let mut other = other;
    assert_eq!(*other.status(), VmStatus::Running);
    other.fire_due_timers().expect("the other phone runs on");
    drop((back, other));
    let _ = std::fs::remove_dir_all(dir);
}

fn console(phone: &QemuPhone) -> String {
    let text = std::fs::read_to_string(phone.dir().join("console.log")).unwrap_or_default();
    text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Waits for the session and for its prompt on the screen (keys typed before would reach no window).
fn ready(phone: &mut QemuPhone) {
    assert!(phone.wait_session(SESSION_WITHIN), "the session came up (console: {})", console(phone));
    let by = Instant::now() + Duration::from_secs(60);
    loop {
        let frame = phone.frame().expect("frame");
        let row = frame.width as usize * 4;
        if frame.rgba[..row * 40].chunks_exact(4).any(|p| p[0] > 0xa0 && p[1] > 0xa0) {
            return;
        }
        assert!(Instant::now() < by, "the prompt never showed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_image_upgrade_carries_the_users_home_and_a_rollback_carries_it_back() {
    let _one = one_at_a_time();
    let (engine, v1, dir) = engine("linux-upgrade");
    // Version 2: the same parts under another name (another file, so another image).
    let file = image::parse(image_bytes()).expect("the image parses");
    let manifest = image::Manifest { name: "version 2".into(), ..file.manifest.clone() };
    let v2 = engine.load_image(&image::pack(manifest, &file.parts).expect("pack v2")).expect("load v2").hash;
    assert_ne!(v1, v2);
    let config = VmConfig::default();
    let mut phone = engine.boot(&v1, &config, 0).expect("boot v1");
    ready(&mut phone);
    type_text(&mut phone, "echo kept > kept.txt && echo left > /tmp/left.txt\n");
    wait_file(&phone, "/home/phone/kept.txt", b"kept\n");
    wait_file(&phone, "/tmp/left.txt", b"left\n");
    let saved = phone.snapshot(SnapshotRequest::Full).expect("snapshot");
    drop(phone);

    let mut upgraded = engine.upgrade(&v2, &[&saved.bytes], &config).expect("upgrade to v2");
    assert_eq!(upgraded.info().image, v2);
    assert_eq!(upgraded.read_file("/home/phone/kept.txt").expect("the home came along"), b"kept\n");
    assert!(upgraded.read_file("/tmp/left.txt").is_err(), "what is outside the home stays with the old image");
    assert!(upgraded.now_ns() >= saved_ns(&saved.bytes), "the phone's clock goes on");

    // Rolling back is the same call with the older image.
    let again = upgraded.snapshot(SnapshotRequest::Full).expect("snapshot v2");
    drop(upgraded);
    let back = engine.upgrade(&v1, &[&again.bytes], &config).expect("roll back to v1");
    assert_eq!(back.info().image, v1);
    assert_eq!(back.read_file("/home/phone/kept.txt").expect("the home came back"), b"kept\n");
    drop(back);
    let _ = std::fs::remove_dir_all(dir);
}

fn saved_ns(snapshot: &[u8]) -> u64 {
    vmi_snapshot::Snapshot::peek_header(snapshot).expect("header").virtual_ns
}

/// The world outside the site for one test: a network namespace behind a veth pair (the site's end
/// `198.51.100.1`, the outside's `198.51.100.2`: documentation addresses, outside every range the fence blocks,
/// each a /32 with a route to the other so the site's own network is its one address), with a TCP server there
/// that says one line to its first caller. Removed when dropped.
struct Outside {
    name: String,
    site_end: std::net::Ipv4Addr,
    server: std::net::SocketAddr,
}

impl Outside {
    fn new() -> Outside {
        let pid = std::process::id();
        let name = format!("vmi-out-{pid}");
        let (site_end, far_end) = (std::net::Ipv4Addr::new(198, 51, 100, 1), std::net::Ipv4Addr::new(198, 51, 100, 2));
        let (here, there) = (format!("vmo{pid}"), format!("vmi{pid}"));
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip").args(args).output().expect("run ip (iproute2)");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let _ = std::process::Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let mut outside = Outside { name: name.clone(), site_end, server: (far_end, 0).into() };
        ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
        ip(&["link", "set", &there, "netns", &name]);
        ip(&["addr", "add", &format!("{site_end}/32"), "dev", &here]);
        ip(&["link", "set", &here, "up"]);
        ip(&["route", "add", &format!("{far_end}/32"), "dev", &here]);
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{far_end}/32"), "dev", &there]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &there, "up"]);
        ip(&["netns", "exec", &name, "ip", "route", "add", &format!("{site_end}/32"), "dev", &there]);
        // The server: a thread of this test that enters the namespace (a thread's network namespace is its own).
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let netns = std::fs::File::open(format!("/run/netns/{name}")).expect("the namespace");
        std::thread::spawn(move || {
            use std::io::Write;
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace file this thread holds open; it moves only this thread.
            assert_eq!(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "enter the namespace");
            let listener = std::net::TcpListener::bind((far_end, 0)).expect("listen outside");
            port_tx.send(listener.local_addr().expect("port").port()).expect("port sent");
            if let Ok((mut caller, _)) = listener.accept() {
                let _ = caller.write_all(b"hello from outside\n");
            }
        });
        let port = port_rx.recv_timeout(Duration::from_secs(10)).expect("the server listens");
        outside.server = (far_end, port).into();
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// An image that asks for a network: its phone reaches a server outside the site (in a network namespace behind
/// a veth pair), and none of the site's own addresses: neither its loopback (QEMU's gateway, 10.0.2.2, is the
/// site's 127.0.0.1) nor its address on that link; a listener on every address of the site is never called.
/// Not as root, the site cannot fence such a phone and refuses to start it, saying why.
#[test]
fn a_phone_with_a_network_reaches_outside_and_not_its_site() {
    let _one = one_at_a_time();
    let (engine, _, dir) = engine("linux-network");
    let file = image::parse(image_bytes()).expect("the image parses");
    let manifest = image::Manifest { name: "with a network".into(), network: true, ..file.manifest.clone() };
    let hash = engine.load_image(&image::pack(manifest, &file.parts).expect("pack")).expect("load").hash;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let refused = engine.boot(&hash, &VmConfig::default(), 0).err().expect("no fence, no phone");
        assert!(refused.to_string().contains("cannot fence"), "{refused}");
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    let outside = Outside::new();
    let site = std::net::TcpListener::bind("0.0.0.0:0").expect("a listener on the site");
    site.set_nonblocking(true).expect("nonblocking");
    let port = site.local_addr().expect("port").port();
    let mut phone = engine.boot(&hash, &VmConfig::default(), 0).expect("the phone boots");
    ready(&mut phone);
    let (far, far_port) = (outside.server.ip(), outside.server.port());
    type_text(
        &mut phone,
        &format!(
            "cat </dev/tcp/{far}/{far_port} >out.txt; for a in 10.0.2.2 {site_end}; do \
             timeout 5 bash -c \"exec 3<>/dev/tcp/$a/{port}\"; echo \"$a $?\"; done >site.txt\n",
            site_end = outside.site_end
        ),
    );
    wait_file(&phone, "/home/phone/out.txt", b"hello from outside\n");
    let by = Instant::now() + Duration::from_secs(60);
    let tried = loop {
        let text = phone.read_guest_file("/home/phone/site.txt", Duration::from_secs(10)).unwrap_or_default();
        let text = String::from_utf8_lossy(&text).into_owned();
        if text.lines().count() == 2 {
            break text;
        }
        assert!(Instant::now() < by, "the guest never tried the site's addresses: {text:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    for line in tried.lines() {
        assert!(!line.ends_with(" 0"), "the guest reached the site: {tried}");
    }
    match site.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a connection reached the site's listener: {other:?}"),
    }
    drop(phone);
    drop(outside);
    let _ = std::fs::remove_dir_all(dir);
}
