//! # vmi-engine: what a virtual phone engine must do
//!
//! A user's phone is a VM on an edge site. This crate is the small contract between
//! whatever runs those VMs (the WebAssembly micro-VM engine today, a QEMU/KVM engine
//! later) and everything above them (the site daemon, the CLI, benchmarks):
//!
//! - an [`Engine`] compiles images once ([`Engine::load_image`]) and makes VMs from them
//!   ([`Engine::create`]) or from snapshots ([`Engine::restore`]);
//! - a [`VirtualPhone`] takes [`Event`]s one at a time, fires its own timers, exposes its
//!   framebuffer with the damage since the last read, raises [`Notification`]s, and
//!   snapshots itself at event boundaries into the `vmi-snapshot` format.
//!
//! Nothing engine-specific (no wasmtime type) appears here, and nothing here knows of
//! HTTP, async runtimes or terminals.

mod clock;
mod engines;
mod error;
mod types;

pub use clock::{Clock, ManualClock, SystemClock, VirtualClock};
pub use engines::Engines;
pub use error::{EngineError, VmError, error_chain};
pub use types::*;
pub use vmi_snapshot::{Header as SnapshotHeader, Limits as SnapshotLimits, SnapshotId};

use std::sync::Arc;

/// Something that runs virtual phones.
pub trait Engine: Send + Sync {
    /// Short name recorded in snapshots (e.g. `"wasm"`).
    fn name(&self) -> &'static str;

    /// What the hibernated phones' shared page store holds: distinct pages and their bytes (`None`: this engine
    /// does not hibernate phones).
    fn page_store(&self) -> Option<(usize, usize)> {
        None
    }

    /// Whether `bytes` look like an image of this engine (by its magic): how a site with several engines
    /// ([`Engines`]) picks the one an image belongs to. An engine alone takes whatever it is given.
    fn accepts(&self, bytes: &[u8]) -> bool {
        let _ = bytes;
        true
    }

    /// Validates and compiles an image once; later VMs of it are cheap. Loading the same
    /// bytes again returns the same image.
    fn load_image(&self, bytes: &[u8]) -> Result<ImageInfo, EngineError>;

    /// The image with this content hash, if loaded.
    fn image(&self, hash: &ImageHash) -> Option<ImageInfo>;

    /// Boots a new phone from a loaded image.
    fn create(&self, image: &ImageHash, config: &VmConfig) -> Result<Box<dyn VirtualPhone>, EngineError>;

    /// Brings back a phone of `image` from a snapshot chain: a full snapshot followed by
    /// zero or more incremental ones, each the child of the one before. A chain taken
    /// from another image is refused (`SnapshotError::WrongImage`).
    fn restore(
        &self,
        image: &ImageHash,
        chain: &[&[u8]],
        config: &VmConfig,
    ) -> Result<Box<dyn VirtualPhone>, EngineError>;

    /// Boots a phone on a new image version from its old snapshot chain: only the
    /// persistent key-value store, the unread mail and the virtual clock cross
    /// (docs/GUEST_ABI.md, see [`Carryover`]); the new image starts fresh and reads the
    /// user's data back from the store. Rolling back is the same call with the older
    /// image.
    fn upgrade(
        &self,
        image: &ImageHash,
        chain: &[&[u8]],
        config: &VmConfig,
    ) -> Result<Box<dyn VirtualPhone>, EngineError>;

    /// Boots a fresh phone that continues an earlier life of the same user's phone: the
    /// new phone gets a fresh memory and `vmi_init`, with `carried`'s key-value store and
    /// unread mail, and a virtual clock that goes on from `carried.virtual_ns`. This is
    /// [`Engine::upgrade`] without a snapshot: how a phone that crashed before any
    /// snapshot of its image was taken is started again (take
    /// [`VirtualPhone::carryover`] from the crashed phone).
    fn create_from(
        &self,
        image: &ImageHash,
        carried: &Carryover,
        config: &VmConfig,
    ) -> Result<Box<dyn VirtualPhone>, EngineError>;

    /// Starts a restore that receives its chain piece by piece (a live migration's
    /// pre-copy rounds arrive while the source phone still runs), so that only the last,
    /// small piece is applied while the phone is stopped.
    fn begin_restore(&self, image: &ImageHash, config: &VmConfig) -> Result<Box<dyn RestoreStage>, EngineError>;

    /// The clock this engine's VMs read time from.
    fn clock(&self) -> Arc<dyn Clock>;
}

/// A restore in progress: snapshots of one chain are applied as they arrive.
pub trait RestoreStage: Send {
    /// Lays one snapshot down; it must be the base of the chain or the child of the one
    /// before (checked), and of the stage's image.
    fn apply(&mut self, snapshot: &[u8]) -> Result<(), EngineError>;

    /// Snapshots applied so far.
    fn applied(&self) -> usize;

    /// The phone, in the state of the last snapshot applied.
    fn finish(self: Box<Self>) -> Result<Box<dyn VirtualPhone>, EngineError>;
}

/// One running (or crashed) virtual phone.
///
/// All methods run at event boundaries: an event is delivered to completion before the
/// call returns, so a snapshot always sees a quiescent guest.
pub trait VirtualPhone: Send {
    /// Which image this phone runs and its screen size.
    fn info(&self) -> &VmInfo;

    /// Whether the phone is running or has crashed.
    fn status(&self) -> &VmStatus;

    /// Delivers one input or system event. A guest that traps or runs out of its CPU
    /// budget is stopped and marked crashed; the error says which.
    fn deliver(&mut self, event: Event) -> Result<(), VmError>;

    /// Virtual monotonic time of the earliest armed timer, if any.
    fn next_timer_ns(&self) -> Option<u64>;

    /// Delivers every timer due at the current virtual time, earliest first. Returns how
    /// many fired.
    fn fire_due_timers(&mut self) -> Result<usize, VmError>;

    /// The phone's virtual monotonic time now.
    fn now_ns(&self) -> u64;

    /// The framebuffer and the damage since the last call (which this call clears).
    fn frame(&mut self) -> Result<Frame<'_>, VmError>;

    /// Notifications the guest raised since the last call.
    fn take_notifications(&mut self) -> Vec<Notification>;

    /// The text the guest last copied to the clipboard since the last call (`clipboard_set`), for the user's
    /// terminals. An engine whose guests cannot copy returns nothing.
    fn take_clipboard(&mut self) -> Option<String> {
        None
    }

    /// Puts a mail in the user's mailbox (host side); the guest fetches it on its own
    /// schedule, or at once after an [`Event::MailArrived`].
    fn push_mail(&mut self, mail: Mail) -> Result<(), VmError>;

    /// Number of mails waiting in the mailbox, not yet fetched by the guest.
    fn mailbox_len(&self) -> usize;

    /// A value of the phone's persistent key-value store (docs/GUEST_ABI.md), read on
    /// the host side: for operators, support and image upgrades. Works on a crashed
    /// phone too.
    fn kv_get(&self, key: &[u8]) -> Option<Vec<u8>>;

    /// A file of the guest (at most 48 KiB; a full-system guest's, through its agent), for operators, support and
    /// tests. It may take a moment: the guest answers at its own pace.
    fn read_file(&self, path: &str) -> Result<Vec<u8>, VmError> {
        Err(VmError::Unsupported(format!("read files (asked for {path:?}): its engine keeps a key-value store")))
    }

    /// What a next life of this phone keeps (its key-value store, unread mail and
    /// virtual clock), for [`Engine::create_from`]. Works on a crashed phone too: the
    /// host-side state a trap cannot corrupt is all there.
    fn carryover(&self) -> Carryover;

    /// Takes the lines the guest logged since the last call, oldest first. The engine
    /// keeps a bounded queue, rate-limited per second of virtual time; lines it had to
    /// drop are reported by one line saying how many (docs/GUEST_ABI.md, `log`). An
    /// engine whose guests cannot log returns nothing.
    fn take_logs(&mut self) -> Vec<LogLine> {
        Vec::new()
    }

    /// Takes a snapshot at this event boundary. `Incremental` holds only the pages
    /// written since this phone's previous snapshot (or since it was restored) and
    /// names that snapshot as its parent.
    fn snapshot(&mut self, kind: SnapshotRequest) -> Result<EncodedSnapshot, VmError>;

    /// The id of the last snapshot that completed (the end of the last good chain), if any: the parent an
    /// incremental snapshot taken now names.
    fn last_snapshot_id(&self) -> Option<SnapshotId>;

    /// The chain (a full snapshot and the incremental ones after it) ending at the last snapshot that completed:
    /// kept through a crash so the phone can be brought back. An engine may keep it compactly (a hibernated phone's
    /// pages) and build its bytes here.
    fn last_good_chain(&self) -> Result<Vec<Vec<u8>>, VmError>;

    /// What the phone uses.
    fn usage(&self) -> ResourceUsage;

    /// Gives back the phone's instance and memory while it is idle, keeping what it is (its engine's page store
    /// holds its pages); anything that needs the guest wakes it first, transparently. Returns whether it did (an
    /// engine without hibernation, or a crashed or already hibernated phone, does nothing).
    fn hibernate(&mut self) -> Result<bool, VmError> {
        Ok(false)
    }

    /// Whether the phone has its instance and memory now (not hibernated).
    fn resident(&self) -> bool {
        true
    }

    /// Stops the guest where it is (a migration's freeze: nothing may run here while the destination may take
    /// over). A phone that runs only inside this trait's calls (the WebAssembly engine's) is stopped already.
    fn pause(&mut self) -> Result<(), VmError> {
        Ok(())
    }

    /// Lets a paused guest run again (an aborted migration's source, a committed arrival).
    fn resume(&mut self) -> Result<(), VmError> {
        Ok(())
    }

    /// Asks the phone to call `listener` when something changed on its own, outside any call of this trait: a
    /// guest that runs by itself (a full-system VM) drew, raised a notification, or died. Its owner then looks
    /// ([`VirtualPhone::frame`], [`VirtualPhone::take_notifications`], [`VirtualPhone::status`]). The listener
    /// must be quick and must not call back into the phone. Phones that change only inside calls ignore it.
    fn set_activity_listener(&mut self, listener: Arc<dyn Fn() + Send + Sync>) {
        let _ = listener;
    }

    /// Which engine runs this phone (its snapshots' engine name).
    fn engine(&self) -> &'static str {
        "wasm"
    }

    /// How often at most the site should record this phone's state while it changes, when the engine asks for less
    /// often than the site's own pace (`None`): a snapshot that stops a full-system guest and reads all its RAM
    /// costs far more than one of a micro-VM. It is what a crash of the site can cost this phone.
    fn record_every(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether the guest runs by itself between calls (a full-system VM): its state changes without any event,
    /// so its site treats what it draws or raises as change to record.
    fn runs_by_itself(&self) -> bool {
        false
    }

    /// The hardware accelerator under the guest, for engines that have one (`"kvm"`, or `"tcg"`: none).
    fn accelerator(&self) -> Option<&'static str> {
        None
    }
}

/// Moves a manual clock forward by `ns`, stopping at each of `phone`'s timer deadlines on
/// the way to fire it at its exact virtual time: how scripted runs and tests let time
/// pass for a phone.
pub fn advance_phone(phone: &mut dyn VirtualPhone, clock: &ManualClock, ns: u64) -> Result<(), VmError> {
    let mut left = ns;
    loop {
        let now = phone.now_ns();
        match phone.next_timer_ns() {
            Some(t) if t.saturating_sub(now) <= left => {
                let step = t.saturating_sub(now);
                clock.advance(step);
                left -= step;
                phone.fire_due_timers()?;
            }
            _ => {
                clock.advance(left);
                phone.fire_due_timers()?;
                return Ok(());
            }
        }
    }
}
