//! A checked-out phone as the page runs it: everything but the guest's own code, which
//! the browser's WebAssembly engine runs.
//!
//! The page hands over the checkout bundle; [`OfflinePhone::open`] checks it and gives back
//! the instrumented image to instantiate. [`OfflinePhone::restore`] lays out the memory and
//! globals the page copies into the instance (the checkout base, or the base and the
//! state this browser saved since). While the phone runs, the guest's imports are the
//! [`Host`]'s methods. [`OfflinePhone::save`] turns the instance's memory and globals into
//! one incremental snapshot against the checkout base, which the page keeps across
//! reloads and [`OfflinePhone::checkin`] sends back.

use std::sync::Arc;

use vmi_engine::{Clock, Event, Rect, VirtualClock};
use vmi_guest_abi::ENGINE_NAME;
use vmi_guest_abi::event::{TIMER_EVENT, raw_event};
use vmi_guest_abi::host::{Framebuffer, Host};
use vmi_guest_abi::image::{self, GlobalKind};
use vmi_guest_abi::persist::{Reader, Writer};
use vmi_protocol::offline::{Checkin, CheckinHeader, OfflineLease, decode_bundle, encode_checkin};
use vmi_protocol::{ClientMessage, decode_client};
use vmi_snapshot::{GlobalValue, Header, Limits, PAGE_SIZE, SnapshotId, SnapshotKind, SnapshotView};

/// Largest memory a phone may have in the browser (the sites' engine cap).
pub const MAX_MEMORY_BYTES: u64 = 256 << 20;

/// Why the page's offline phone refused something; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The checkout bundle or a message from the page does not decode.
    #[error("{what}: {source}")]
    Protocol {
        /// What was being read.
        what: &'static str,
        /// Why it did not decode.
        source: vmi_protocol::ProtocolError,
    },
    /// The phone's image fails the guest ABI's checks.
    #[error("the phone's image is refused: {0}")]
    Image(#[from] image::ImageCheckError),
    /// A snapshot is malformed or does not belong to this checkout.
    #[error("snapshot: {0}")]
    Snapshot(#[from] vmi_snapshot::SnapshotError),
    /// A snapshot's host state is malformed.
    #[error(transparent)]
    HostState(#[from] vmi_guest_abi::GuestAbiError),
    /// The pieces of the checkout do not belong together.
    #[error("{0}")]
    Mismatch(String),
    /// A message that is not something a phone is given.
    #[error("{0}")]
    NotAnEvent(String),
}

/// What the page copies into a fresh instance to bring the phone back.
#[derive(Debug)]
pub struct Restored {
    /// Linear memory, whole.
    pub memory: Vec<u8>,
    /// Every mutable global, in the image's order.
    pub globals: Vec<GlobalValue>,
}

/// A checked-out phone in the page.
pub struct OfflinePhone {
    lease: OfflineLease,
    base: Vec<u8>,
    base_id: SnapshotId,
    base_header: Header,
    /// Memory exactly as the base lays it down: a save compares against it page by page
    /// (the browser cannot watch writes).
    base_memory: Vec<u8>,
    globals: Vec<(String, GlobalKind)>,
    abi_version: u32,
    limits: Limits,
    /// Host state and the imports' rules.
    pub host: Host,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl OfflinePhone {
    /// Opens a checkout bundle (docs/OFFLINE.md): the lease, the base and the image must
    /// belong together. Returns the phone and the instrumented image to instantiate.
    pub fn open(bundle: &[u8], clock: Arc<dyn Clock>) -> Result<(OfflinePhone, Vec<u8>), OfflineError> {
        let bundle =
            decode_bundle(bundle).map_err(|source| OfflineError::Protocol { what: "checkout bundle", source })?;
        let image_hash = blake3::hash(&bundle.image);
        if hex(image_hash.as_bytes()) != bundle.lease.image {
            return Err(OfflineError::Mismatch(format!(
                "the bundle's image hashes to {}, its lease names {}",
                image_hash.to_hex(),
                bundle.lease.image
            )));
        }
        let prepared = image::prepare(&bundle.image)?;
        let limits = Limits { max_memory_bytes: MAX_MEMORY_BYTES, ..Limits::default() };
        let view = SnapshotView::parse(&bundle.snapshot, &limits)?;
        view.header.check_compat(ENGINE_NAME, image_hash.as_bytes())?;
        if !matches!(view.header.kind, SnapshotKind::Full) {
            return Err(OfflineError::Mismatch("the checkout base is not a full snapshot".into()));
        }
        let base_id = SnapshotId::of(&bundle.snapshot);
        if base_id.to_hex() != bundle.lease.base_id {
            return Err(OfflineError::Mismatch(format!(
                "the checkout base is {}, its lease names {}",
                base_id.to_hex(),
                bundle.lease.base_id
            )));
        }
        let mut base_memory = vec![0u8; view.header.memory_bytes as usize];
        view.pages.apply_full_to(&mut base_memory)?;
        let base_header = view.header.clone();
        let host = Host::new(clock, 1, MAX_MEMORY_BYTES);
        let phone = OfflinePhone {
            lease: bundle.lease,
            base_id,
            base_header,
            base_memory,
            globals: prepared.globals,
            abi_version: 1,
            limits,
            host,
            base: bundle.snapshot,
        };
        Ok((phone, prepared.instrumented))
    }

    /// The lease this phone is out under.
    pub fn lease(&self) -> &OfflineLease {
        &self.lease
    }

    /// The image's mutable globals in order: the export the instrumentation gave each, and its type.
    pub fn globals(&self) -> &[(String, GlobalKind)] {
        &self.globals
    }

    /// The version of the guest ABI the image speaks (its `vmi_abi_version`, 1 without one).
    pub fn set_abi_version(&mut self, version: u32) {
        self.abi_version = version;
    }

    /// Brings the phone back: the checkout base, then `saved` (what [`OfflinePhone::save`]
    /// returned earlier) when there is one. Host state and clock are set; the memory and
    /// globals returned are for the page to copy into the instance.
    pub fn restore(&mut self, saved: Option<&[u8]>) -> Result<Restored, OfflineError> {
        let base = SnapshotView::parse(&self.base, &self.limits)?;
        let (memory, header, globals, host_state) = match saved {
            None => (self.base_memory.clone(), base.header.clone(), base.globals.clone(), base.host_state.to_vec()),
            Some(bytes) => {
                let view = SnapshotView::parse(bytes, &self.limits)?;
                view.header.check_compat(ENGINE_NAME, &self.base_header.image_hash)?;
                let id = SnapshotId::of(bytes);
                vmi_snapshot::check_chain(&[(self.base_id, &self.base_header), (id, &view.header)])?;
                let mut memory = self.base_memory.clone();
                memory.resize(view.header.memory_bytes as usize, 0);
                view.pages.apply_to(&mut memory)?;
                (memory, view.header.clone(), view.globals.clone(), view.host_state.to_vec())
            }
        };
        if globals.len() != self.globals.len() {
            return Err(OfflineError::Mismatch(format!(
                "the snapshot has {} globals, the image {}",
                globals.len(),
                self.globals.len()
            )));
        }
        self.host.load(&mut Reader::new(&host_state))?;
        self.host.vclock = VirtualClock::resume(self.host.clock.as_ref(), header.virtual_ns, header.wall_ns);
        self.host.instantiated = true;
        // Everything on the screen is new to the page that restores it.
        if let Some(fb) = self.host.framebuffer {
            self.host.damage = vec![Rect { x: 0, y: 0, w: fb.width, h: fb.height }];
        }
        Ok(Restored { memory, globals })
    }

    /// The phone's state now (the instance's `memory` and `globals`, host state here) as one
    /// incremental snapshot whose parent is the checkout base: every page that differs from
    /// what the base laid down.
    pub fn save(&self, memory: &[u8], globals: &[GlobalValue]) -> Result<Vec<u8>, OfflineError> {
        if globals.len() != self.globals.len() {
            return Err(OfflineError::Mismatch(format!(
                "{} globals given, the image has {}",
                globals.len(),
                self.globals.len()
            )));
        }
        if memory.len() < self.base_memory.len() || !memory.len().is_multiple_of(PAGE_SIZE) {
            return Err(OfflineError::Mismatch(format!(
                "memory of {} bytes: not whole pages, or less than the base's {}",
                memory.len(),
                self.base_memory.len()
            )));
        }
        let dirty: Vec<u32> = memory
            .chunks(PAGE_SIZE)
            .enumerate()
            .filter(|(i, page)| self.base_memory.get(i * PAGE_SIZE..(i + 1) * PAGE_SIZE) != Some(*page))
            .map(|(i, _)| i as u32)
            .collect();
        let mut w = Writer::default();
        self.host.save(&mut w);
        let header = Header {
            engine: ENGINE_NAME.to_string(),
            image_hash: self.base_header.image_hash,
            memory_bytes: memory.len() as u64,
            kind: SnapshotKind::Incremental { parent: self.base_id },
            virtual_ns: self.host.now_ns(),
            wall_ns: self.host.clock.wall_ns(),
        };
        Ok(vmi_snapshot::encode_dirty(&header, globals, &w.into_inner(), memory, &dirty)?.bytes)
    }

    /// The body of a checkin of this lease: `saved` (the last [`OfflinePhone::save`]), or
    /// none to return the phone as it left.
    pub fn checkin(&self, saved: Option<&[u8]>) -> Vec<u8> {
        encode_checkin(&Checkin {
            header: CheckinHeader { lease_id: self.lease.lease_id.clone(), input_seqs: Default::default() },
            chain: saved.map(|s| vec![s.to_vec()]).unwrap_or_default(),
        })
    }

    /// The guest call for one terminal message (docs/PROTOCOL.md, as the page encodes it
    /// for a site): an input, a display change, sleep or wake. `None` when the guest is
    /// not called for it (a display change for a version-1 image).
    pub fn event_for(&self, message: &[u8]) -> Result<Option<[i32; 4]>, OfflineError> {
        let message =
            decode_client(message).map_err(|source| OfflineError::Protocol { what: "terminal message", source })?;
        let event = match message {
            ClientMessage::Input { input, .. } => input.to_event(),
            ClientMessage::Display(display) => {
                let screen = display.phone_screen();
                Event::Display { width: screen.width, height: screen.height, density: screen.density }
            }
            ClientMessage::Sleep => Event::Sleep,
            ClientMessage::Wake => Event::Wake,
            other => return Err(OfflineError::NotAnEvent(format!("{other:?} is not something the phone is given"))),
        };
        Ok(raw_event(event, self.host.mailbox.len(), self.abi_version))
    }

    /// The guest call for the next timer due, taken off the armed set.
    pub fn due_timer(&mut self) -> Option<[i32; 4]> {
        self.host.take_due_timer().map(|id| [TIMER_EVENT, id as i32, 0, 0])
    }

    /// Milliseconds of host time until the next timer is due (0 when one is due now).
    pub fn next_timer_ms(&self) -> Option<f64> {
        let next = self.host.timers.values().copied().min()?;
        Some(next.saturating_sub(self.host.now_ns()) as f64 / 1e6)
    }

    /// Where the framebuffer is, and what changed on it since the last call.
    pub fn take_frame(&mut self) -> (Option<Framebuffer>, Vec<Rect>) {
        (self.host.framebuffer, std::mem::take(&mut self.host.damage))
    }

    /// What the phone put out since the last call, as JSON for the page:
    /// `{"notifications":[{"title","body","at_ms"}], "clipboard": text or null, "logs": ["…"]}`.
    pub fn take_outputs(&mut self) -> String {
        // Stamped with the wall clock when the page hears of them, as a site stamps them.
        let at_ms = self.host.clock.wall_ns() / 1_000_000;
        let notifications: Vec<_> = self
            .host
            .notifications
            .drain(..)
            .map(|n| serde_json::json!({"title": n.title, "body": n.body, "at_ms": at_ms}))
            .collect();
        let now = self.host.now_ns();
        let logs: Vec<String> = self.host.logs.take(now).into_iter().map(|l| l.text).collect();
        serde_json::json!({"notifications": notifications, "clipboard": self.host.clipboard.take(), "logs": logs})
            .to_string()
    }
}
