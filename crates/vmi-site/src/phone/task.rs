//! The phone task: the one owner of a VM, as a small state machine.
//!
//! ```text
//!            Freeze                    Fence
//!  Running ─────────▶ Frozen ─────────────────▶ (ended: the phone lives elsewhere)
//!    ▲  │  ◀───────── (held inputs applied)
//!    │  │    Thaw
//!    │  │ a trap, its CPU budget, its memory cap
//!    │  ▼
//!  Crashed ── terminals told (Error PhoneDown) and refused until it runs again
//!    │
//!    └─ Replace (a restart or a restored checkpoint) ──▶ Running
//!
//!  Stop / CheckOut (from any state): a snapshot first, then the task ends.
//! ```
//!
//! Fenced is not a state but a condition: a phone that could have been failed over to its standby copy (one was
//! made) runs only while the site holds its lease from the control service ([`crate::standby::Lease`]). Without
//! it, no input is applied, no timer fires, no frame or state leaves, and terminals are told to go; the state is
//! kept, and runs on once the lease is back and the placement still names this site.
//!
//! After every command or timer the task collects what the guest produced (damage,
//! notifications, log lines) and pushes it to the attached terminals: frames only to
//! awake terminals with credit, notifications to all. Notifications raised while no
//! terminal is attached stay in the VM's queue (captured in its snapshots) until one
//! says Hello.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vmi_engine::{Clock, Event, LogLevel, SnapshotRequest, VirtualPhone, VmStatus};
use vmi_protocol::{ErrorCode, Input, ServerMessage};

use super::terminals::Terminals;
use super::{
    AttachRefusal, FrozenPhone, KEPT_LOG_LINES, LifecycleCommand, LogLine, MAX_HELD_INPUTS, PhoneCommand, PhoneError,
    PhoneStatus, PreCopyRound, SavedPhone, Screenshot, ServiceCommand, TerminalCommand,
};

/// Where the phone is in its life.
enum State {
    /// Runs events and timers.
    Running,
    /// Stopped for the end of a live migration: its state is on its way to another site.
    /// Inputs that come meanwhile are held: applied on thaw, resent by the terminals to
    /// the destination on fence (they were never acknowledged).
    Frozen { held: Vec<HeldInput> },
    /// Stopped by a trap, its CPU budget or its memory cap; runs again when replaced.
    Crashed { reason: String },
}

struct HeldInput {
    session: u64,
    seq: u64,
    input: Input,
}

/// What woke the task.
enum Woke {
    Command(Option<PhoneCommand>),
    Written(Result<crate::standby::Written, String>),
    Timer,
    /// The phone changed on its own (a guest that runs by itself drew, notified or died).
    Activity,
}

/// Whether the task goes on after a command.
enum Next {
    Continue,
    End,
}

/// The phone task's state.
pub struct PhoneTask {
    user: String,
    phone: Box<dyn VirtualPhone>,
    clock: Arc<dyn Clock>,
    state: State,
    terminals: Terminals,
    /// Highest input applied per device (docs/PROTOCOL.md, rule 7).
    input_seqs: HashMap<String, u64>,
    /// Whether the VM was last told a screen is on.
    told_awake: bool,
    /// The phone's screen as its last frame had it (the guest may attach another size than configured).
    screen: (u32, u32),
    /// The phone screen last asked of the guest for a terminal's display (None: none asked in this task).
    display: Option<vmi_protocol::PhoneScreen>,
    logs: VecDeque<LogLine>,
    /// Where the phone's state is kept durable while it runs, if anywhere.
    durable: Option<Durable>,
    /// Per device, the highest input kept durable (the terminals are told: docs/PROTOCOL.md, `InputDurable`).
    durable_seqs: HashMap<String, u64>,
    /// Where every applied input is recorded, with the placement epoch it was applied at (`vmi nemesis`).
    history: Option<Arc<vmi_control_api::history::History>>,
    /// This task among every phone task of the process (`{pid}-{n}` in the history): two tasks of one phone
    /// running at once on one site would be two owners too.
    task: u64,
    /// A migration's arrival running before its ownership committed: the VM runs, but nothing it does leaves the
    /// task (no record is written; no terminal or service can reach it until the site registers it) until
    /// [`LifecycleCommand::Commit`]. If the commit fails the task is stopped and its state dropped.
    provisional: bool,
    /// The site's hibernation policy and resident count, when phones hibernate here.
    residency: Option<Arc<crate::hibernation::Residency>>,
    /// Whether this phone counts in `residency` as resident now.
    counted_resident: bool,
    /// When something last came to the phone from outside (a terminal, a mail, an operator); its own timers do
    /// not count.
    last_active: Instant,
    /// The phone was replaced (a restart, a restored checkpoint): the new one is told whom to wake.
    phone_replaced: bool,
    /// The screen hash of the framebuffer while nothing was drawn since it was taken (a resuming terminal's
    /// Hello compares with it): a migration's arrival takes it at once, so its terminals' handoff does not.
    screen_hash: Option<u64>,
    /// A migration's arrival writes its first record after this (its terminals' handoff goes first).
    first_record_after: Option<Instant>,
    /// An arrival's terminals whose screens the source vouched for: device → the frame update after which it
    /// showed exactly the screen restored here. Good while nothing is drawn here.
    vouched: HashMap<String, u64>,
    /// The phone's place in the site's phone and terminal gauges, when the site counts them.
    gauge: Option<crate::metrics::PhoneGauge>,
    /// When the oldest input not yet followed by a display update reached the task (the input-to-frame figure).
    input_at: Option<Instant>,
    /// Where a crash is told, for the control service's audit log (this site's id, and its pending entries).
    crash_report: Option<(String, Arc<crate::access::Guard>)>,
}

/// How long an input waits for a display update to count in the input-to-frame figure: one that changed nothing
/// on the screen is forgotten then, not matched with an unrelated frame later.
const INPUT_SHOWS_WITHIN: Duration = Duration::from_secs(1);

/// Numbers the phone tasks of this process.
static TASKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// How often, at most, a phone that changed writes a journal record (to its disk and its standby copy): what a
/// crash of the site can cost, and about how long terminals wait to hear their inputs are durable.
pub const DURABLE_EVERY: Duration = Duration::from_millis(200);
/// How long an arrived phone's first record waits after its commit, for its terminals' handoff (a millisecond or
/// two) to come first: the full state it takes holds the task for milliseconds.
const FIRST_RECORD_GRACE: Duration = Duration::from_millis(10);
/// Journal records after a full state before the next record is a full state again (bounded replay at restore,
/// and a bounded chain in the engine).
const MAX_DELTAS: u32 = 300;
/// Journal bytes after a full state before the next record is a full state again (a full-system guest's deltas
/// are megabytes: the journal, and a restore's replay, stay bounded in bytes too).
const MAX_JOURNAL_BYTES: u64 = 256 << 20;
/// How long after a pre-copy round no state is written (a full snapshot would restart the migration's rounds).
const PRE_COPY_QUIET: Duration = Duration::from_secs(30);

/// The phone's durable state: a full state and a journal of incremental records on this site's disk
/// (`phones/USER/`, see [`crate::persist`]), the same records streamed to a standby copy on another site, one
/// record at most every [`DURABLE_EVERY`] while the phone changes.
struct Durable {
    dir: PathBuf,
    /// Something reached the VM since the last write.
    changed: bool,
    written_at: Instant,
    /// The last pre-copy round of a migration, if one is under way.
    pre_copy_at: Option<Instant>,
    /// The write in flight (one at a time, in order).
    pending: Option<tokio::task::JoinHandle<crate::standby::Written>>,
    /// The site's record of phones it cannot keep durable (its heartbeat says so).
    health: Arc<crate::persist::DiskHealth>,
    /// The snapshot the local journal ends at (None: the next record must be a full state).
    journal_last: Option<vmi_engine::SnapshotId>,
    /// Records since the last full state.
    deltas: u32,
    /// Bytes of the records since the last full state.
    journal_bytes: u64,
    /// The site whose standby copy ends at `journal_last`, if any.
    standby_at: Option<String>,
    /// Streams records to a standby site, and says whether this site holds its lease.
    standby: Arc<crate::standby::Replication>,
    /// Terminals were told to go because the lease lapsed.
    fenced: bool,
    /// From the last record's snapshot to the standby's answer.
    standby_lag: Option<Duration>,
}

impl PhoneTask {
    /// A task for `phone`, with the input sequence numbers it had when saved.
    pub fn new(
        user: String,
        phone: Box<dyn VirtualPhone>,
        clock: Arc<dyn Clock>,
        input_seqs: HashMap<String, u64>,
    ) -> PhoneTask {
        let state = match phone.status() {
            VmStatus::Running => State::Running,
            VmStatus::Crashed { reason } => State::Crashed { reason: reason.clone() },
        };
        let screen = (phone.info().width, phone.info().height);
        PhoneTask {
            user,
            phone,
            clock,
            state,
            terminals: Terminals::default(),
            input_seqs,
            // Unknown (a fresh guest starts awake; a saved one is as it was): with no screen on, the first flush
            // tells it to sleep, or its screen-only timers (the clock's minute) would wake it for nothing.
            told_awake: true,
            screen,
            display: None,
            durable: None,
            durable_seqs: HashMap::new(),
            logs: VecDeque::new(),
            history: None,
            task: TASKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            provisional: false,
            screen_hash: None,
            first_record_after: None,
            vouched: HashMap::new(),
            gauge: None,
            input_at: None,
            crash_report: None,
            residency: None,
            counted_resident: false,
            last_active: Instant::now(),
            phone_replaced: false,
        }
    }

    /// The same task, keeping the phone's state durable in `dir` and on a standby site while it runs
    /// ([`DURABLE_EVERY`]), and saying in `health` when it cannot. From then on the phone runs only while the site
    /// holds its lease (`standby`'s): a copy of it elsewhere may be started when the lease runs out.
    pub fn durable_in(
        mut self,
        dir: PathBuf,
        health: Arc<crate::persist::DiskHealth>,
        standby: Arc<crate::standby::Replication>,
    ) -> PhoneTask {
        let written_at = Instant::now();
        self.durable = Some(Durable {
            dir,
            // The first record is a full state (in this task's chain), so the phone is durable as it is now.
            changed: true,
            written_at: written_at.checked_sub(DURABLE_EVERY).unwrap_or(written_at),
            pre_copy_at: None,
            pending: None,
            health,
            journal_last: None,
            deltas: 0,
            journal_bytes: 0,
            standby_at: None,
            standby,
            fenced: false,
            standby_lag: None,
        });
        self
    }

    /// The same task, running provisionally until [`LifecycleCommand::Commit`] (see `provisional`), with the
    /// terminals' screens its source vouched for.
    pub fn provisional(mut self, vouched: HashMap<String, u64>) -> PhoneTask {
        self.provisional = true;
        self.vouched = vouched;
        // The source told it what its screens were; the terminals joining the move say the rest (nothing may
        // reach the arrival before its commit).
        self.told_awake = false;
        self
    }

    /// The same task, recording every input it applies to `history` (off: `None`).
    pub fn recording_to(mut self, history: Option<Arc<vmi_control_api::history::History>>) -> PhoneTask {
        self.history = history;
        self
    }

    /// The same task, hibernating its phone by the site's policy when idle (`None`: never).
    pub fn hibernating(mut self, residency: Option<Arc<crate::hibernation::Residency>>) -> PhoneTask {
        self.residency = residency;
        self.note_residency();
        self
    }

    /// Counts the phone, and its terminals, in the site's gauges from now on.
    pub fn counted_in(mut self, metrics: Arc<crate::metrics::SiteMetrics>) -> PhoneTask {
        self.gauge = Some(crate::metrics::PhoneGauge::new(metrics));
        self.note_census();
        self
    }

    /// Tells every crash of the phone to the control service's audit log (action `CRASH`, the reason in its
    /// detail), as site `site`, through `guard`'s entries sent with the heartbeat.
    pub fn reporting_crashes(mut self, site: String, guard: Arc<crate::access::Guard>) -> PhoneTask {
        self.crash_report = Some((site, guard));
        self
    }

    /// Keeps the phone's place in the site's gauges right (a provisional arrival is not the site's yet).
    fn note_census(&mut self) {
        use crate::metrics::Census;
        let state = match self.state {
            _ if self.provisional => None,
            State::Crashed { .. } => Some(Census::Crashed),
            _ if self.phone.resident() => Some(Census::Resident),
            _ => Some(Census::Hibernated),
        };
        let (awake, all) = (self.terminals.awake_count(), self.terminals.len());
        if let Some(gauge) = &mut self.gauge {
            gauge.set(state, awake, all - awake);
        }
    }

    /// Keeps the site's count of resident phones right: the engine wakes a phone on its own when something needs it.
    fn note_residency(&mut self) {
        let Some(r) = &self.residency else { return };
        let resident = self.phone.resident();
        if resident && !self.counted_resident {
            r.arrived();
        } else if !resident && self.counted_resident {
            r.left();
        }
        self.counted_resident = resident;
    }

    /// How long until the phone may hibernate, if it may at all now: a running phone with no awake terminal, its
    /// state durable, nothing done for the policy's idle time, and no timer due within it.
    fn until_hibernate(&self) -> Option<Duration> {
        let r = self.residency.as_ref()?;
        if !self.phone.resident() || !matches!(self.state, State::Running) || self.provisional {
            return None;
        }
        if self.terminals.any_awake() || self.durable.as_ref().is_some_and(|d| d.changed || d.pending.is_some()) {
            return None;
        }
        // Idle means nothing from outside (a terminal, a mail, an operator) for the policy's time; the phone's own
        // timers are its background work: it sleeps between them unless the next one is due too soon to bother.
        let idle = r.idle_needed();
        let next_timer =
            self.phone.next_timer_ns().map(|t| Duration::from_nanos(t.saturating_sub(self.phone.now_ns())));
        if next_timer.is_some_and(|t| t < crate::hibernation::TIMER_SOON.min(idle)) {
            return None;
        }
        Some(idle.saturating_sub(self.last_active.elapsed()))
    }

    /// Hibernates the phone if it may now ([`PhoneTask::until_hibernate`]).
    fn maybe_hibernate(&mut self) {
        if self.until_hibernate() != Some(Duration::ZERO) {
            return;
        }
        match self.phone.hibernate() {
            Ok(true) => tracing::debug!(user = %self.user, "phone hibernated"),
            Ok(false) => {}
            Err(e) => tracing::warn!(user = %self.user, "cannot hibernate the phone: {e}"),
        }
        self.note_residency();
    }

    /// Whether the phone must not run now: the site's lease lapsed (the phone may be failed over).
    fn fenced(&self) -> bool {
        self.durable.as_ref().is_some_and(|d| !d.standby.lease().live())
    }

    /// Tells the terminals to go when the lease lapses (once), and notes when it is back.
    fn note_fence(&mut self) {
        let fenced = self.fenced();
        let Some(d) = &mut self.durable else { return };
        if fenced && !d.fenced {
            d.fenced = true;
            tracing::warn!(user = %self.user, "the site's lease lapsed: the phone is fenced (nothing runs)");
            // A guest that runs by itself is stopped: its standby copy may be started elsewhere.
            if let Err(e) = self.phone.pause() {
                tracing::warn!(user = %self.user, "cannot stop the fenced phone: {e}");
            }
            self.terminals
                .close_all(&ServerMessage::Error { code: ErrorCode::PhoneDown, message: FENCED_WORDS.into() });
        } else if !fenced && d.fenced {
            d.fenced = false;
            tracing::info!(user = %self.user, "the site's lease is back: the phone runs");
            // Only a phone that runs here: not one frozen for a move, nor an arrival before its commit.
            if matches!(self.state, State::Running)
                && !self.provisional
                && let Err(e) = self.phone.resume()
            {
                tracing::warn!(user = %self.user, "the phone cannot run again after the lease came back: {e}");
            }
        }
    }

    /// Runs until stopped, fenced or checked out, or until every sender is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<PhoneCommand>) {
        // The first flush starts from a clean damage slate: terminals get full frames. Damage there means the screen
        // is not the one the source froze: nothing it vouched for holds.
        if self.phone.frame().is_ok_and(|frame| !frame.damage.is_empty()) {
            self.vouched.clear();
        }
        // A guest that runs by itself (a Linux phone) draws, notifies or dies between commands: it wakes the task.
        let activity = Arc::new(tokio::sync::Notify::new());
        self.listen_to_phone(&activity);

        loop {
            let wait = self.until_next_timer().min(self.until_durable()).min(self.until_lease_check());
            let wait = self.until_hibernate().map_or(wait, |h| wait.min(h));
            let pending = self.durable.as_mut().and_then(|d| d.pending.as_mut());
            let written = async move {
                match pending {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            };
            let woke = tokio::select! {
                c = rx.recv() => Woke::Command(c),
                w = written => Woke::Written(w.map_err(|e| e.to_string())),
                _ = tokio::time::sleep(wait) => Woke::Timer,
                _ = activity.notified() => Woke::Activity,
            };
            let command = match woke {
                Woke::Command(None) => break,
                Woke::Command(Some(c)) => Some(c),
                Woke::Written(w) => {
                    if let Some(d) = self.durable.as_mut() {
                        d.pending = None;
                    }
                    self.note_write(w);
                    None
                }
                Woke::Timer => None,
                Woke::Activity => {
                    // A guest that runs by itself changed on its own: that is state to record.
                    if self.phone.runs_by_itself() {
                        self.changed();
                    }
                    None
                }
            };
            self.note_fence();
            let next = match command {
                None => {
                    self.fire_timers();
                    Next::Continue
                }
                Some(PhoneCommand::Terminal(c)) => {
                    self.last_active = Instant::now();
                    self.on_terminal(c);
                    Next::Continue
                }
                Some(PhoneCommand::Service(c)) => {
                    if c.is_activity() {
                        self.last_active = Instant::now();
                    }
                    self.on_service(c);
                    Next::Continue
                }
                Some(PhoneCommand::Lifecycle(c)) => {
                    // Whatever a lifecycle step writes or hands over comes after the write in flight, never
                    // before it: a late write must not overwrite a clean stop's state or outlive a move away.
                    self.finish_write().await;
                    self.on_lifecycle(c)
                }
            };
            if let Next::End = next {
                self.forget_health();
                self.leave_residency();
                return;
            }
            if self.phone_replaced {
                self.phone_replaced = false;
                self.listen_to_phone(&activity);
            }
            self.note_crash();
            self.flush();
            self.keep_durable();
            self.note_residency();
            self.note_census();
            self.maybe_hibernate();
        }
        tracing::debug!(user = %self.user, "phone task ends");
        self.forget_health();
        self.leave_residency();
    }

    /// Has the phone wake `activity` when it changes on its own.
    fn listen_to_phone(&mut self, activity: &Arc<tokio::sync::Notify>) {
        let activity = activity.clone();
        self.phone.set_activity_listener(Arc::new(move || activity.notify_one()));
    }

    /// The task ends: its phone no longer counts among the site's resident ones.
    fn leave_residency(&mut self) {
        if let (Some(r), true) = (&self.residency, self.counted_resident) {
            r.left();
        }
        self.counted_resident = false;
    }

    /// How long until the phone's changes are due on disk (an hour when there is nothing to write; a write in
    /// flight wakes the task when it ends).
    fn until_durable(&self) -> Duration {
        match &self.durable {
            // Nothing is written before the commit, which wakes the task itself.
            Some(_) if self.provisional => Duration::from_secs(3600),
            Some(_) if let Some(after) = self.first_record_after => after.saturating_duration_since(Instant::now()),
            Some(d) if d.pending.is_some() => Duration::from_secs(3600),
            Some(d) if d.changed => self.record_every().saturating_sub(d.written_at.elapsed()),
            _ => Duration::from_secs(3600),
        }
    }

    /// A phone under a lease with terminals attached looks at it often, to tell them at once when it lapses (and to
    /// run again soon after it is back). Without terminals there is no one to tell: every input, mail, timer and
    /// command checks the lease when it comes, so an idle phone (a hibernated one above all) costs no wakeups.
    fn until_lease_check(&self) -> Duration {
        match &self.durable {
            Some(_) if !self.terminals.is_empty() => Duration::from_millis(100),
            _ => Duration::from_secs(3600),
        }
    }

    /// The phone leaves this site (stopped, moved, checked out): whatever failed for it is no longer the site's.
    fn forget_health(&self) {
        if let Some(d) = &self.durable {
            d.health.clear(&self.user);
        }
    }

    /// Whether this site's disk holds the phone's state as it is: running, nothing happened since its last record,
    /// no write in flight, and the journal ends at the phone's last snapshot.
    fn durable_is_current(&self) -> bool {
        let Some(d) = &self.durable else { return false };
        matches!(self.state, State::Running)
            && !self.provisional
            && !d.changed
            && d.pending.is_none()
            && d.journal_last.is_some()
            && d.journal_last == self.phone.last_snapshot_id()
    }

    /// Notes that the VM changed (an input, a mail, a timer, a new VM): its state is due on disk.
    /// How often at most the phone's state is recorded while it changes: the site's pace, or its engine's when
    /// slower.
    fn record_every(&self) -> Duration {
        self.phone.record_every().map_or(DURABLE_EVERY, |e| e.max(DURABLE_EVERY))
    }

    fn changed(&mut self) {
        if let Some(d) = &mut self.durable {
            d.changed = true;
        }
    }

    /// Waits for the write in flight, if any, and notes how it went.
    async fn finish_write(&mut self) {
        let Some(pending) = self.durable.as_mut().and_then(|d| d.pending.take()) else { return };
        let result = pending.await.map_err(|e| e.to_string());
        self.note_write(result);
    }

    /// A record's outcome. On this site's disk: a failure is logged and told to the site's health (its heartbeat
    /// then says the site is degraded), the state stays due and the next record is a full state; a success clears
    /// it. On the standby: a failure makes the next record a full state (to that site or another). The inputs
    /// the record holds are durable once both hold it (or only the disk, when there is no other site to stand
    /// by): the terminals are told.
    fn note_write(&mut self, result: Result<crate::standby::Written, String>) {
        let Some(d) = &mut self.durable else { return };
        let written = match result {
            Ok(w) => w,
            Err(e) => crate::standby::Written::lost(format!("the write did not finish: {e}")),
        };
        match &written.local {
            Ok(()) => {
                d.health.clear(&self.user);
                d.journal_last = Some(written.id);
                d.deltas = if written.full { 0 } else { d.deltas + 1 };
            }
            Err(why) => {
                tracing::error!(user = %self.user, "cannot keep the phone durable: {why}");
                d.health.failed(&self.user, why.clone());
                d.changed = true;
                d.journal_last = None;
            }
        }
        match &written.standby {
            Ok(Some(site)) => {
                d.standby_at = Some(site.clone());
                d.standby_lag = Some(written.taken.elapsed());
            }
            Ok(None) => d.standby_at = None,
            Err(why) => {
                tracing::warn!(user = %self.user, "the standby copy did not take the record: {why}");
                d.standby_at = None;
                d.changed = true;
            }
        }
        if written.local.is_ok() && written.standby.is_ok() {
            for (device, seq) in written.input_seqs {
                let durable = self.durable_seqs.entry(device).or_default();
                *durable = (*durable).max(seq);
            }
            self.terminals.tell_durable(&self.durable_seqs);
        }
    }

    /// Writes the phone's state when it changed and [`DURABLE_EVERY`] has passed: a full snapshot taken here,
    /// written and synced off the async workers, one write at a time. Not while a migration's pre-copy runs
    /// (a full snapshot would restart its rounds), nor while frozen or crashed.
    fn keep_durable(&mut self) {
        let running = matches!(self.state, State::Running) && !self.fenced() && !self.provisional;
        if let Some(after) = self.first_record_after {
            if Instant::now() < after {
                return;
            }
            self.first_record_after = None;
        }
        let every = self.record_every();
        let Some(d) = &mut self.durable else { return };
        let migrating = d.pre_copy_at.is_some_and(|at| at.elapsed() < PRE_COPY_QUIET);
        if !d.changed || !running || migrating || d.written_at.elapsed() < every || d.pending.is_some() {
            return; // (a disk slower than DURABLE_EVERY: the record after the one in flight holds the newer state)
        }
        // A record continues the chain when the journal (and the standby copy) end at the VM's last snapshot; a
        // checkpoint or a migration's rounds in between, a failed write or a new standby need a full state.
        let last = self.phone.last_snapshot_id();
        let delta = d.journal_last.is_some()
            && d.journal_last == last
            && d.deltas < MAX_DELTAS
            && d.journal_bytes < MAX_JOURNAL_BYTES
            && d.standby.target_is(d.standby_at.as_deref());
        let request = if delta { SnapshotRequest::Incremental } else { SnapshotRequest::Full };
        let by_itself = self.phone.runs_by_itself();
        let snapshot = match long(by_itself, || self.phone.snapshot(request)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(user = %self.user, "cannot take the phone's durable snapshot: {e}");
                return;
            }
        };
        d.journal_bytes = if snapshot.parent.is_none() { 0 } else { d.journal_bytes + snapshot.bytes.len() as u64 };
        let record = crate::standby::Record {
            user: self.user.clone(),
            id: snapshot.id,
            full: snapshot.parent.is_none(),
            saved: SavedPhone { snapshot: snapshot.bytes, input_seqs: self.input_seqs.clone() },
            standby_at: d.standby_at.clone(),
        };
        d.changed = false;
        d.written_at = Instant::now();
        d.pending = Some(tokio::spawn(d.standby.clone().write(d.dir.clone(), record)));
    }

    fn until_next_timer(&self) -> Duration {
        // Only a running phone fires timers. Timers are in the phone's virtual time, which
        // runs at wall speed; an idle phone with no timer still wakes once a minute
        // (cheaply) in case the clock is a manual one that moved.
        let idle = Duration::from_secs(60);
        if self.fenced() {
            // Its timers wait for the lease: look again soon, without spinning on a timer already due.
            return Duration::from_millis(100);
        }
        match (&self.state, self.phone.next_timer_ns()) {
            (State::Running, Some(t)) => Duration::from_nanos(t.saturating_sub(self.phone.now_ns())).min(idle),
            (State::Running, None) => idle,
            _ => Duration::from_secs(3600),
        }
    }

    fn fire_timers(&mut self) {
        if !matches!(self.state, State::Running) || self.fenced() {
            return;
        }
        // Woken for something else (a write's outcome, the idle minute): nothing due, nothing changes.
        let now = self.phone.now_ns();
        let Some(due) = self.phone.next_timer_ns().filter(|&t| t <= now) else { return };
        let asleep = !self.phone.resident();
        let started = Instant::now();
        if let Err(e) = self.phone.fire_due_timers() {
            tracing::warn!(user = %self.user, "timer event failed: {e}");
        }
        if asleep && let Some(r) = &self.residency {
            // From the timer's due time (on the phone's clock) to the guest having run it: the wake included.
            r.timer_woke(Duration::from_nanos(now - due) + started.elapsed());
        }
        self.changed();
    }

    /// A VM that crashed while running: its terminals are told and let go, new ones are
    /// refused until it runs again (a restart, a restored checkpoint).
    fn note_crash(&mut self) {
        let VmStatus::Crashed { reason } = self.phone.status() else { return };
        if matches!(self.state, State::Crashed { .. }) {
            return;
        }
        let reason = reason.clone();
        tracing::error!(user = %self.user, %reason, "phone crashed");
        if let Some((site, guard)) = &self.crash_report {
            let entry = vmi_control_api::auth::AuditEntry {
                id: 0,
                at_ms: self.clock.wall_ns() / 1_000_000,
                principal: vmi_control_api::auth::Principal::Site { id: site.clone() }.to_string(),
                action: "CRASH".to_owned(),
                user: Some(self.user.clone()),
                site: Some(site.clone()),
                from: "in-process".to_owned(),
                status: 500,
                detail: reason.chars().take(500).collect(),
            };
            guard.record(entry, false, None);
        }
        if let Some(gauge) = &self.gauge {
            gauge.metrics().crashed();
        }
        self.collect_output();
        self.terminals.close_all(&ServerMessage::Error { code: ErrorCode::PhoneDown, message: crashed_words(&reason) });
        self.state = State::Crashed { reason };
    }

    fn size(&self) -> (u32, u32) {
        self.screen
    }

    /// A terminal's display: the guest lays its screen out for it (a version-1 guest keeps its screen). Its
    /// frames then carry the new size, and [`Terminals::send_frames`] tells each terminal.
    fn follow_display(&mut self, display: vmi_protocol::Display) {
        if !matches!(self.state, State::Running) || self.fenced() {
            return;
        }
        let screen = display.phone_screen();
        if self.display == Some(screen) {
            return;
        }
        self.display = Some(screen);
        let event = Event::Display { width: screen.width, height: screen.height, density: screen.density };
        if let Err(e) = self.phone.deliver(event) {
            tracing::warn!(user = %self.user, "display change failed: {e}");
        }
        self.note_crash();
        self.changed();
    }

    fn on_terminal(&mut self, command: TerminalCommand) {
        match command {
            TerminalCommand::Attach { attachment, reply } => {
                let refusal = match &self.state {
                    State::Crashed { reason } => {
                        Some(AttachRefusal { code: ErrorCode::PhoneDown, message: crashed_words(reason) })
                    }
                    _ if self.fenced() => {
                        Some(AttachRefusal { code: ErrorCode::PhoneDown, message: FENCED_WORDS.into() })
                    }
                    _ => None,
                };
                if let Some(refusal) = refusal {
                    let _ = reply.send(Err(refusal));
                    return;
                }
                // Full: the newcomer is someone using the phone now; the terminal idle the longest makes room.
                if !self.terminals.has_room()
                    && let Some(evicted) = self.terminals.evict_idlest()
                {
                    tracing::info!(user = %self.user, session = evicted, "idle terminal closed to make room");
                }
                if let Some(display) = attachment.display {
                    self.follow_display(display);
                    if let State::Crashed { reason } = &self.state {
                        let refusal = AttachRefusal { code: ErrorCode::PhoneDown, message: crashed_words(reason) };
                        let _ = reply.send(Err(refusal));
                        return;
                    }
                }
                let last_input_seq = self.input_seqs.get(&attachment.device_id).copied().unwrap_or(0);
                let (screen, damage) = match self.phone.frame() {
                    Ok(frame) => {
                        if !frame.rgba.is_empty() {
                            self.screen = (frame.width, frame.height);
                        }
                        (Some(frame.rgba.to_vec()), frame.damage)
                    }
                    Err(_) => (None, Vec::new()),
                };
                if !damage.is_empty() {
                    // Drawn on: the kept hash and the vouched screens no longer hold.
                    self.screen_hash = None;
                    self.vouched.clear();
                }
                // Only a resuming terminal needs the hash (a full screen's worth of work: kept while it holds). One
                // the source vouched for (its screen is exactly this one, after that frame) needs none.
                // Good once: a later Hello of the device (another of its windows) is hashed as usual.
                let vouched = attachment.resume.is_some_and(|r| {
                    self.vouched.get(&attachment.device_id) == Some(&r.last_frame_seq)
                        && self.vouched.remove(&attachment.device_id).is_some()
                });
                let hash = match (&screen, attachment.resume) {
                    (Some(rgba), Some(r)) if !rgba.is_empty() && vouched => Some(r.screen_hash),
                    (Some(rgba), Some(_)) if !rgba.is_empty() => {
                        Some(*self.screen_hash.get_or_insert_with(|| vmi_protocol::display::screen_hash(rgba)))
                    }
                    _ => None,
                };
                let size = self.size();
                // Damage read here is owed to the terminals already attached.
                self.terminals.add_damage(&damage);
                let screen = screen.as_deref().zip(hash);
                let attached = self.terminals.attach(attachment, size, screen, last_input_seq);
                // What is durable already (all of it, for a phone that just came back from its durable state).
                self.terminals.tell_durable(&self.durable_seqs);
                let _ = reply.send(Ok(attached));
            }
            TerminalCommand::Detach { session } => self.terminals.detach(session),
            TerminalCommand::Prepared { session } => self.terminals.prepared(session),
            TerminalCommand::Input { session, seq, input } => {
                self.terminals.touch(session);
                self.on_input(session, seq, input)
            }
            TerminalCommand::FrameAck { session, seq } => self.terminals.ack_frames(session, seq),
            TerminalCommand::Ping { session, nonce } => self.terminals.send(session, ServerMessage::Pong { nonce }),
            TerminalCommand::Fail { session, code, message } => self.terminals.fail(session, code, message),
            TerminalCommand::Sleep { session } => self.terminals.sleep(session),
            TerminalCommand::Wake { session } => {
                self.terminals.touch(session);
                let size = self.size();
                self.terminals.wake(session, size);
            }
            TerminalCommand::Display { session, display } => {
                self.terminals.touch(session);
                self.follow_display(display);
            }
        }
    }

    /// Rule 7: an input numbered above the highest applied for its device is applied and
    /// acknowledged; one at or below it is acknowledged with that highest number and not
    /// applied again.
    fn on_input(&mut self, session: u64, seq: u64, input: Input) {
        if let State::Frozen { held } = &mut self.state {
            // Beyond the cap they are dropped unacknowledged: the terminal resends them.
            if held.len() < MAX_HELD_INPUTS {
                held.push(HeldInput { session, seq, input });
            }
            return;
        }
        let Some(device) = self.terminals.device_of(session).map(str::to_string) else { return };
        // Fenced: not applied, not acknowledged (the terminal resends it, to wherever the phone runs next).
        if matches!(self.state, State::Crashed { .. }) || self.fenced() {
            return;
        }
        let last = self.input_seqs.get(&device).copied().unwrap_or(0);
        if seq > last {
            // The time before and after: a process paused in between (SIGSTOP) records the apply late, and the
            // checker must know it happened somewhere in that span.
            let invoked_us = self.history.as_ref().map(|_| vmi_control_api::history::now_us());
            if let Err(e) = self.phone.deliver(input.to_event()) {
                // Not applied: not acknowledged either.
                tracing::warn!(user = %self.user, "input failed: {e}");
                return;
            }
            if let Some(history) = &self.history {
                let epoch = self.durable.as_ref().and_then(|d| d.standby.epoch_of(&self.user));
                let task = format!("{}-{}", std::process::id(), self.task);
                let fields = serde_json::json!({ "user": self.user, "device": device, "seq": seq, "epoch": epoch,
                    "task": task, "invoked_us": invoked_us });
                history.record("apply", fields);
            }
            self.input_seqs.insert(device, seq);
            self.input_at.get_or_insert_with(Instant::now);
            self.changed();
        }
        // Acknowledge duplicates too: the terminal resent because it missed the ack.
        self.terminals.send(session, ServerMessage::InputAck { seq: seq.max(last) });
    }

    fn on_service(&mut self, command: ServiceCommand) {
        match command {
            ServiceCommand::Revoked { device } => {
                let closed = self.terminals.close_device(&device);
                if closed > 0 {
                    tracing::info!(user = %self.user, device, closed, "revoked device's terminals closed");
                }
            }
            ServiceCommand::Mail { mail, push, reply } => {
                let r = match &self.state {
                    // The copy here may be failed over: the sender asks again, wherever the phone runs then.
                    _ if self.fenced() => Err(PhoneError::Moving),
                    State::Frozen { .. } => Err(PhoneError::Moving),
                    State::Crashed { reason } => Err(PhoneError::Crashed { reason: reason.clone() }),
                    State::Running => self
                        .phone
                        .push_mail(mail)
                        .and_then(|()| if push { self.phone.deliver(Event::MailArrived) } else { Ok(()) })
                        .map_err(PhoneError::from),
                };
                self.changed();
                let _ = reply.send(r);
            }
            ServiceCommand::Screen { reply } => {
                let shot = match self.phone.frame() {
                    Ok(frame) if frame.rgba.is_empty() => Err(PhoneError::NoScreen),
                    Ok(frame) => {
                        let shot = Screenshot { width: frame.width, height: frame.height, rgba: frame.rgba.to_vec() };
                        if !frame.damage.is_empty() {
                            // Drawn on: the kept hash and the vouched screens no longer hold.
                            self.screen_hash = None;
                            self.vouched.clear();
                        }
                        self.terminals.add_damage(&frame.damage);
                        Ok(shot)
                    }
                    Err(e) => Err(PhoneError::Vm(e)),
                };
                let _ = reply.send(shot);
            }
            ServiceCommand::File { path, reply } => {
                let by_itself = self.phone.runs_by_itself();
                let read = long(by_itself, || self.phone.read_file(&path));
                let _ = reply.send(read.map_err(|e| e.to_string()));
            }
            ServiceCommand::Kv { key, reply } => {
                let _ = reply.send(self.phone.kv_get(key.as_bytes()));
            }
            ServiceCommand::Tick { reply } => {
                self.fire_timers();
                self.note_crash();
                self.flush();
                let _ = reply.send(());
            }
            ServiceCommand::Status { reply } => {
                let usage = self.phone.usage();
                let (status, crashed) = match &self.state {
                    State::Running => ("running".to_string(), false),
                    State::Frozen { .. } => ("moving".to_string(), false),
                    State::Crashed { reason } => (format!("crashed: {reason}"), true),
                };
                let _ = reply.send(PhoneStatus {
                    status,
                    crashed,
                    terminals: self.terminals.len(),
                    awake: self.terminals.awake_count(),
                    memory_bytes: usage.memory_bytes,
                    resident: self.phone.resident(),
                    wakes: usage.wakes,
                    events: usage.events,
                    cpu_units: usage.cpu_total,
                    image: self.phone.info().image.to_hex(),
                    engine: match self.phone.accelerator() {
                        Some(accel) => format!("{}/{accel}", self.phone.engine()),
                        None => self.phone.engine().to_owned(),
                    },
                    standby: self.durable.as_ref().and_then(|d| d.standby_at.clone()),
                    standby_lag_ms: self.durable.as_ref().and_then(|d| d.standby_lag).map(|l| l.as_millis() as u64),
                });
            }
            ServiceCommand::Logs { reply } => {
                self.collect_output();
                let _ = reply.send(self.logs.iter().cloned().collect());
            }
        }
    }

    fn on_lifecycle(&mut self, command: LifecycleCommand) -> Next {
        match command {
            LifecycleCommand::Stop { reply } => match self.save() {
                Ok(saved) => {
                    let _ = reply.send(Ok(saved));
                    return Next::End;
                }
                // No snapshot, no stop: the phone keeps running rather than vanish (the
                // caller decides what that means: a crashed phone with no snapshot restarts
                // afresh).
                Err(e) => {
                    tracing::info!(user = %self.user, "the phone cannot stop with a snapshot: {e}");
                    let _ = reply.send(Err(e));
                }
            },
            LifecycleCommand::Shutdown { reply } if self.durable_is_current() => {
                tracing::debug!(user = %self.user, "stopped; its journal holds its state");
                let _ = reply.send(Ok(None));
                return Next::End;
            }
            LifecycleCommand::Shutdown { reply } => match self.save() {
                Ok(saved) => {
                    let _ = reply.send(Ok(Some(saved)));
                    return Next::End;
                }
                Err(e) => {
                    tracing::info!(user = %self.user, "the phone cannot stop with a snapshot: {e}");
                    let _ = reply.send(Err(e));
                }
            },
            LifecycleCommand::CheckOut { goodbye, reply } => match self.save() {
                // Only once the site holds the snapshot may the VM go: one live copy, and
                // never none.
                Ok(saved) => match reply.send(Ok(saved)) {
                    Ok(()) => {
                        self.terminals.close_all(&goodbye);
                        tracing::info!(user = %self.user, "phone checked out; stopped");
                        return Next::End;
                    }
                    Err(_) => tracing::warn!(user = %self.user, "checkout gave up; the phone keeps running"),
                },
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            LifecycleCommand::PreCopy { first, reply } => {
                if let Some(d) = &mut self.durable {
                    d.pre_copy_at = Some(Instant::now());
                }
                let request = if first { SnapshotRequest::PreCopyStart } else { SnapshotRequest::PreCopy };
                let by_itself = self.phone.runs_by_itself();
                let r = match &self.state {
                    State::Crashed { reason } => Err(PhoneError::Crashed { reason: reason.clone() }),
                    _ => long(by_itself, || self.phone.snapshot(request))
                        .map(|s| PreCopyRound { bytes: s.bytes, pages: s.pages })
                        .map_err(PhoneError::from),
                };
                let _ = reply.send(r);
            }
            LifecycleCommand::Freeze { reply } => {
                // What was drawn and not yet read is owed to the terminals: their screens are not current. A screen
                // that cannot be read is vouched for by nobody.
                let readable = self.phone.frame().map(|frame| frame.damage.to_vec());
                if let Ok(damage) = &readable
                    && !damage.is_empty()
                {
                    // Drawn on: the kept hash and the vouched screens no longer hold.
                    self.screen_hash = None;
                    self.vouched.clear();
                    self.terminals.add_damage(damage);
                }
                let screens = if readable.is_ok() { self.terminals.current_screens(self.size()) } else { Vec::new() };
                let r = match &self.state {
                    // Stopped, and kept stopped: nothing may run here while the destination may take over.
                    State::Running => long(self.phone.runs_by_itself(), || {
                        self.phone.pause().and_then(|()| self.phone.snapshot(SnapshotRequest::Incremental))
                    })
                    .map(|s| FrozenPhone {
                        saved: SavedPhone { snapshot: s.bytes, input_seqs: self.input_seqs.clone() },
                        screens,
                    })
                    .inspect_err(|_| {
                        let _ = self.phone.resume();
                    })
                    .map_err(PhoneError::from),
                    State::Frozen { .. } => Err(PhoneError::Moving),
                    State::Crashed { reason } => Err(PhoneError::Crashed { reason: reason.clone() }),
                };
                if r.is_ok() {
                    self.state = State::Frozen { held: Vec::new() };
                }
                let _ = reply.send(r);
            }
            LifecycleCommand::Thaw => {
                // A migration that did not happen: its pre-copy is over, and the phone is durable again.
                if let Some(d) = &mut self.durable {
                    d.pre_copy_at = None;
                }
                if let State::Frozen { .. } = self.state
                    && let State::Frozen { held } = std::mem::replace(&mut self.state, State::Running)
                {
                    if let Err(e) = self.phone.resume() {
                        tracing::warn!(user = %self.user, "the phone cannot run again after the move failed: {e}");
                    }
                    for h in held {
                        self.on_input(h.session, h.seq, h.input);
                    }
                }
            }
            LifecycleCommand::Prepare { url, ticket } => self.terminals.prepare(&url, &ticket),
            LifecycleCommand::AwaitPrepared { reply } => self.terminals.await_prepared(reply),
            LifecycleCommand::Redirect { url } => {
                if let State::Frozen { .. } = self.state {
                    self.terminals.close_all(&ServerMessage::Redirect { url });
                }
            }
            LifecycleCommand::Fence { url, reply } => {
                self.terminals.close_all(&ServerMessage::Redirect { url: url.clone() });
                tracing::info!(user = %self.user, %url, "phone moved away; fenced");
                let _ = reply.send(());
                return Next::End;
            }
            LifecycleCommand::Checkpoint { parent, reply } => {
                let r = match &self.state {
                    State::Frozen { .. } => Err(PhoneError::Moving),
                    State::Crashed { reason } => Err(PhoneError::Crashed { reason: reason.clone() }),
                    State::Running => {
                        let last = self.phone.last_snapshot_id();
                        let request = if parent.is_some() && last == parent {
                            SnapshotRequest::Incremental
                        } else {
                            SnapshotRequest::Full
                        };
                        let by_itself = self.phone.runs_by_itself();
                        long(by_itself, || self.phone.snapshot(request)).map(|s| s.bytes).map_err(PhoneError::from)
                    }
                };
                let _ = reply.send(r);
            }
            LifecycleCommand::Commit => {
                // Its first record follows (`changed` is still set): a full state, in this task's chain, taken a
                // moment later so the terminals joining the move attach first.
                self.provisional = false;
                self.first_record_after = Some(Instant::now() + FIRST_RECORD_GRACE);
                // The control service moved the phone here: an arrival kept stopped until now (a Linux phone) runs.
                if let Err(e) = self.phone.resume() {
                    tracing::error!(user = %self.user, "the arrived phone cannot run: {e}");
                    self.state = State::Crashed { reason: format!("it cannot run after its move: {e}") };
                }
            }
            LifecycleCommand::Carryover { reply } => {
                let _ = reply.send(self.phone.carryover());
            }
            LifecycleCommand::Replace { reply, .. } if matches!(self.state, State::Frozen { .. }) => {
                let _ = reply.send(Err(PhoneError::Moving));
            }
            LifecycleCommand::Replace { phone, reply } => {
                self.phone = phone;
                self.phone_replaced = true;
                self.state = State::Running;
                // Drawn on: the kept hash and the vouched screens no longer hold.
                self.screen_hash = None;
                self.vouched.clear();
                // The new VM's damage starts from nothing: repaint every terminal fully.
                let _ = self.phone.frame();
                let size = self.size();
                self.terminals.repaint_all(size);
                // Tell the new VM whether a screen is on, whatever it last knew.
                self.told_awake = !self.terminals.any_awake();
                self.changed();
                tracing::info!(user = %self.user, "phone replaced (a restart or a restored checkpoint)");
                let _ = reply.send(Ok(()));
            }
        }
        Next::Continue
    }

    /// A full snapshot with the input numbering: of the running VM, or of a crashed one's
    /// last good state.
    fn save(&mut self) -> Result<SavedPhone, PhoneError> {
        let snapshot = match self.phone.status() {
            VmStatus::Running => {
                let by_itself = self.phone.runs_by_itself();
                long(by_itself, || self.phone.snapshot(SnapshotRequest::Full)).map(|s| s.bytes)?
            }
            VmStatus::Crashed { reason } => {
                let reason = reason.clone();
                let chain = self.phone.last_good_chain()?;
                let chain: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
                match chain.as_slice() {
                    [] => return Err(PhoneError::NoGoodState { reason }),
                    [full] => full.to_vec(),
                    // Checkpoints extend the chain: resolve it into one full snapshot.
                    chain => vmi_checkpoint::flatten(chain).map_err(PhoneError::Chain)?,
                }
            }
        };
        Ok(SavedPhone { snapshot, input_seqs: self.input_seqs.clone() })
    }

    /// Takes what the guest produced besides pixels: notifications go to every attached
    /// terminal (none attached: they wait in the VM, in its snapshots too), log lines to
    /// the site's log with the user's name and to the lines kept for `vmi vm logs`. A
    /// frozen phone's state is already on its way to another site: nothing is taken.
    fn collect_output(&mut self) {
        if let State::Frozen { .. } = self.state {
            return;
        }
        let now_ms = self.clock.wall_ns() / 1_000_000;
        // A copy reaches the terminals watching now; with none, there is no clipboard to put it on.
        if let Some(text) = self.phone.take_clipboard() {
            self.terminals.send_clipboard(&text);
        }
        if !self.terminals.is_empty() {
            for n in self.phone.take_notifications() {
                self.terminals.broadcast(&ServerMessage::Notification { title: n.title, body: n.body, at_ms: now_ms });
            }
        }
        for line in self.phone.take_logs() {
            let user = self.user.as_str();
            match line.level {
                LogLevel::Error => tracing::error!(target: "guest", user, "{}", line.text),
                LogLevel::Warn => tracing::warn!(target: "guest", user, "{}", line.text),
                LogLevel::Info => tracing::info!(target: "guest", user, "{}", line.text),
                LogLevel::Debug => tracing::debug!(target: "guest", user, "{}", line.text),
                LogLevel::Trace => tracing::trace!(target: "guest", user, "{}", line.text),
            }
            if self.logs.len() == KEPT_LOG_LINES {
                self.logs.pop_front();
            }
            self.logs.push_back(LogLine { at_ms: now_ms, level: line.level.as_str().to_string(), text: line.text });
        }
    }

    /// Pushes what the guest produced to the terminals.
    fn flush(&mut self) {
        if self.fenced() {
            return;
        }
        if let State::Running = self.state {
            // Sleep and wake of the phone follow its terminals: awake if any screen is on.
            let awake = self.terminals.any_awake();
            if awake != self.told_awake {
                let event = if awake { Event::Wake } else { Event::Sleep };
                if let Err(e) = self.phone.deliver(event) {
                    tracing::warn!(user = %self.user, "wake/sleep event failed: {e}");
                }
                self.told_awake = awake;
                self.note_crash();
            }
        }
        self.collect_output();
        // A hibernated phone has drawn nothing since it slept; only a screen that is on is worth waking it for.
        if !self.phone.resident() && !self.terminals.any_awake() {
            return;
        }
        let Ok(frame) = self.phone.frame() else { return };
        if frame.rgba.is_empty() {
            return;
        }
        if !frame.damage.is_empty() {
            // Drawn on: the kept hash and the vouched screens no longer hold.
            self.screen_hash = None;
            self.vouched.clear();
        }
        self.screen = (frame.width, frame.height);
        let sent = self.terminals.send_frames(&frame);
        if let Some(at) = self.input_at {
            if sent > 0 {
                self.input_at = None;
                if let Some(gauge) = &self.gauge {
                    gauge.metrics().input_shown(at.elapsed());
                }
            } else if at.elapsed() > INPUT_SHOWS_WITHIN {
                self.input_at = None;
            }
        }
    }
}

/// What a terminal hears when its phone's site lost its lease.
const FENCED_WORDS: &str =
    "this site lost touch with the control service; your phone goes on here or on another site in a few seconds";

/// What a terminal shows when its phone crashed.
fn crashed_words(reason: &str) -> String {
    format!("your phone stopped ({reason}); nothing saved is lost, and it runs again once restarted")
}

/// Calls into the phone for work that may take a while when the phone runs by itself (a Linux phone's snapshot,
/// tens of milliseconds to a second, or a read through its guest agent), letting the runtime hand this worker's
/// other tasks to another worker meanwhile. A WebAssembly phone's calls take microseconds and run as they are.
fn long<T>(by_itself: bool, f: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if by_itself && multi_thread { tokio::task::block_in_place(f) } else { f() }
}
