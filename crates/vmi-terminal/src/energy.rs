//! The terminal's energy account: what its traffic would cost a phone's LTE radio.
//!
//! The whole point of a terminal is that the phone in the user's hand does almost nothing:
//! it shows pixels while the screen is on and otherwise only receives notifications. On a
//! cellular link the cost of "almost nothing" is not the bytes but the radio's state
//! machine: every packet sent or received while the radio is idle first **promotes** it to
//! RRC_CONNECTED, and after the last packet the radio stays connected for a long **tail**
//! before it drops back to RRC_IDLE. A few bytes every few minutes therefore cost far more
//! than their size suggests.
//!
//! This module records every message the terminal sends or receives as a [`Packet`]
//! (`time_ms`, direction, bytes) against a pluggable [`Clock`] (a benchmark that replays a
//! day in accelerated virtual time passes its virtual clock), counts bytes, messages and
//! **radio wakeups** (packets that find the radio idle), and prices a trace with
//! [`lte_energy`].
//!
//! # The model
//!
//! **This is a model, not a measurement.** It is the LTE power model of
//! J. Huang, F. Qian, A. Gerber, Z. M. Mao, S. Sen, O. Spatscheck, *"A Close Examination of
//! Performance and Power Characteristics of 4G LTE Networks"*, MobiSys 2012, with the
//! constants the authors measured on one phone on one commercial network in 2011-2012. A
//! different phone, modem or operator configuration (the tail timer in particular is set by
//! the network) gives different numbers; the *shape* (promotion + long tail per burst) is
//! what makes the comparison with a polling phone meaningful. See [`LteParams::HUANG_2012`]
//! for every constant and where it comes from.
//!
//! A packet at time `t`:
//!
//! - finds the radio **idle** (no transfer ended within the last `T_tail`): one wakeup; the
//!   promotion costs `P_pro × T_pro` and the transfer starts `T_pro` later;
//! - else it is sent in RRC_CONNECTED, after any transfer still under way; the tail that
//!   had started is charged up to `t` and the inactivity timer restarts.
//!
//! A transfer of `n` bits takes `n / throughput` at the paper's median LTE throughput and
//! costs `(α·throughput + β) × duration` (the paper's throughput power model: `α` per
//! Mbit/s for the direction, `β` the CONNECTED base). After the last transfer the tail runs
//! for `T_tail`: continuous reception at `β` for the DRX inactivity timer `T_i`, then short
//! and long DRX cycles, each at the tail base power `P_tail` with an on-duration of `T_on`
//! at `P_on`. In RRC_IDLE the radio wakes for a paging occasion of `T_on,idle` at
//! `P_on,idle` every paging cycle `T_pi`: its average is the idle power.
//!
//! Everything here is radio power above the phone's screen-off base (11.4 mW in the
//! paper's table), which a phone pays whatever it does and which is left out.
//!
//! **Fast dormancy.** A device that knows its burst is over may ask the network to release
//! the radio instead of waiting out the tail (3GPP Release 8 fast dormancy, the UE's
//! "signalling connection release indication"; in LTE the UE's assistance information,
//! Release 11). [`LteAccount::release_after`] models it: the tail of the current and later
//! bursts ends after the given quiet time, and the next packet pays a promotion. The
//! terminal's [`RadioPolicy`] releases after 1 s of quiet with the screen off and 3 s with a
//! static screen on (long enough that typing, a key every second or two, never pays a
//! promotion's 260 ms). Published savings of the technique: up to 17 % of radio energy and
//! 60 % of tail time (TOP, Qian et al., ICNP 2010), 67 % on LTE with burst prediction (Deng
//! and Balakrishnan, CoNEXT 2012).
//!
//! **The rest of the device** ([`DeviceParams`], [`DeviceEnergy`]): the screen and the
//! application processor, priced with the vendor-measured constants of a phone of the same
//! years, so the terminal's whole day (radio, screen, decoding) can be set beside a polling
//! phone's (radio, screen, computing its apps locally, waking for each sync).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A clock in milliseconds. The default ([`system_clock`]) is wall time since the Unix
/// epoch; a benchmark passes its virtual clock. Readings that go backwards are treated as
/// the previous reading.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Wall time in milliseconds since the Unix epoch.
pub fn system_clock() -> Clock {
    Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// Which way a packet went, seen from the terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Sent by the terminal (uplink).
    Up,
    /// Received by the terminal (downlink).
    Down,
}

/// One message on the radio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Packet {
    /// When, in ms of the [`Clock`].
    pub at_ms: u64,
    /// Which way.
    pub direction: Direction,
    /// Bytes on the wire (the terminal counts the WebSocket payload plus frame header).
    pub bytes: u32,
}

/// Constants of the LTE power model; see [`LteParams::HUANG_2012`].
///
/// Times are milliseconds, powers milliwatts, throughputs Mbit/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LteParams {
    /// `T_pro`: RRC_IDLE → RRC_CONNECTED promotion delay.
    pub promotion_ms: f64,
    /// `P_pro`: average power during promotion.
    pub promotion_mw: f64,
    /// `T_tail`: RRC inactivity timer; the radio stays connected this long after the last
    /// transfer.
    pub tail_ms: f64,
    /// `P_tail`: tail base power between DRX on-durations.
    pub tail_base_mw: f64,
    /// `T_i`: DRX inactivity timer; continuous reception (at `β`) before DRX starts.
    pub drx_inactivity_ms: f64,
    /// `T_is`: how long short DRX lasts before long DRX.
    pub short_drx_ms: f64,
    /// `T_ps`: short DRX cycle.
    pub short_drx_cycle_ms: f64,
    /// `T_pl`: long DRX cycle.
    pub long_drx_cycle_ms: f64,
    /// `T_on`: on-duration of a DRX cycle in RRC_CONNECTED.
    pub drx_on_ms: f64,
    /// `P_on`: power during a DRX on-duration in RRC_CONNECTED.
    pub drx_on_mw: f64,
    /// `T_on` in RRC_IDLE: length of a paging occasion.
    pub idle_on_ms: f64,
    /// `P_on` in RRC_IDLE: power during a paging occasion.
    pub idle_on_mw: f64,
    /// `T_pi`: paging cycle in RRC_IDLE.
    pub paging_cycle_ms: f64,
    /// `α_u`: uplink power per Mbit/s of throughput.
    pub alpha_up_mw_per_mbps: f64,
    /// `α_d`: downlink power per Mbit/s of throughput.
    pub alpha_down_mw_per_mbps: f64,
    /// `β`: RRC_CONNECTED base power of the throughput model (zero throughput).
    pub beta_mw: f64,
    /// Uplink throughput assumed for transfers.
    pub up_mbps: f64,
    /// Downlink throughput assumed for transfers.
    pub down_mbps: f64,
}

impl LteParams {
    /// The constants of Huang et al., MobiSys 2012, as used here.
    ///
    /// From **Table 3** ("LTE, 3G and WiFi power model", power above the screen-off base):
    ///
    /// | constant | value |
    /// | --- | --- |
    /// | LTE promotion `P_pro`, `T_pro` | 1210.7 mW, 260.1 ms |
    /// | LTE short / long DRX on in RRC_CONNECTED `P_on`, `T_on` | 1680.2 / 1680.1 mW, 1.0 ms |
    /// | LTE tail base `P_tail`, `T_tail` | 1060.0 mW, 11576.0 ms |
    /// | LTE DRX on in RRC_IDLE `P_on`, `T_on` | 594.3 mW, 43.2 ms |
    ///
    /// DRX parameters of the measured network (the paper's **Table 2**): `T_i` 100 ms,
    /// `T_is` 20 ms, `T_ps` 20 ms, `T_pl` 40 ms, `T_pi` 1280 ms.
    ///
    /// **Table 4** ("Data transfer power model", `P = α_u·t_u + α_d·t_d + β` with `t` in
    /// Mbit/s): LTE `α_u` 438.39 mW/Mbps, `α_d` 51.97 mW/Mbps, `β` 1288.04 mW.
    ///
    /// Throughput: the paper's abstract reports median LTE throughputs of 13 Mbit/s down and
    /// 6 Mbit/s up (4GTest users); transfers here run at those rates.
    ///
    /// Cross-check: AT&T's Application Resource Optimizer (ARO), built by the same AT&T
    /// Labs group, ships a default LTE profile (`lte.conf` in github.com/attdevsupport/ARO
    /// and attdevsupport/VideoOptimizer) with `T_PROMOTION=0.26`, `P_PROMOTION=1.21`,
    /// `P_TAIL=1.06`, `P_SHORT_DRX_PING=P_LONG_DRX_PING=1.68`, `INACTIVITY_TIMER=0.1`,
    /// `T_SHORT_DRX=0.02`, `T_SHORT_DRX_PING_PERIOD=0.02`, `T_LONG_DRX_PING_PERIOD=0.04`,
    /// `T_IDLE_PING=0.043`, `P_IDLE_PING=0.594`, `T_IDLE_PING_PERIOD=1.28`,
    /// `LTE_ALPHA_UP=438.39`, `LTE_ALPHA_DOWN=51.97` (seconds, watts, mW/Mbps): the same
    /// values at its rounding. ARO differs in three places, which we do not follow: its
    /// tail is its own network's timers (0.1 + 0.02 + 10 s rather than the paper's
    /// measured 11.576 s), its DRX on-duration is 2 ms (paper: 1 ms) and its `LTE_BETA` is
    /// 1.2 W (paper: 1288.04 mW).
    pub const HUANG_2012: LteParams = LteParams {
        promotion_ms: 260.1,
        promotion_mw: 1210.7,
        tail_ms: 11_576.0,
        tail_base_mw: 1060.0,
        drx_inactivity_ms: 100.0,
        short_drx_ms: 20.0,
        short_drx_cycle_ms: 20.0,
        long_drx_cycle_ms: 40.0,
        drx_on_ms: 1.0,
        drx_on_mw: 1680.1,
        idle_on_ms: 43.2,
        idle_on_mw: 594.3,
        paging_cycle_ms: 1280.0,
        alpha_up_mw_per_mbps: 438.39,
        alpha_down_mw_per_mbps: 51.97,
        beta_mw: 1288.04,
        up_mbps: 6.0,
        down_mbps: 13.0,
    };

    /// Average RRC_IDLE power: one paging occasion per paging cycle (≈ 20.1 mW).
    pub fn idle_mw(&self) -> f64 {
        self.idle_on_mw * self.idle_on_ms / self.paging_cycle_ms
    }

    /// Energy in joules of the first `gap_ms` of a tail (capped at `T_tail`).
    pub fn tail_j(&self, gap_ms: f64) -> f64 {
        let g = gap_ms.clamp(0.0, self.tail_ms);
        let crx = g.min(self.drx_inactivity_ms);
        let drx = g - crx;
        let short = drx.min(self.short_drx_ms);
        let long = drx - short;
        // Whole DRX cycles only: an on-duration is counted once its cycle is complete.
        let ons = (short / self.short_drx_cycle_ms).floor() + (long / self.long_drx_cycle_ms).floor();
        let extra = (self.drx_on_mw - self.tail_base_mw) * self.drx_on_ms * ons;
        (self.beta_mw * crx + self.tail_base_mw * drx + extra) / 1e6
    }

    /// Promotion energy in joules (`P_pro × T_pro` ≈ 0.315 J).
    pub fn promotion_j(&self) -> f64 {
        self.promotion_mw * self.promotion_ms / 1e6
    }

    /// Duration (ms) and energy (J) of transferring `bytes` one way.
    pub fn transfer(&self, direction: Direction, bytes: u32) -> (f64, f64) {
        let (mbps, alpha) = match direction {
            Direction::Up => (self.up_mbps, self.alpha_up_mw_per_mbps),
            Direction::Down => (self.down_mbps, self.alpha_down_mw_per_mbps),
        };
        let ms = f64::from(bytes) * 8.0 / (mbps * 1000.0);
        (ms, (alpha * mbps + self.beta_mw) * ms / 1e6)
    }
}

impl Default for LteParams {
    fn default() -> Self {
        LteParams::HUANG_2012
    }
}

/// What a trace costs, by part of the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct EnergyReport {
    /// Time covered, ms.
    pub span_ms: u64,
    /// Everything, joules.
    pub total_j: f64,
    /// Promotions (IDLE → CONNECTED), joules.
    pub promotion_j: f64,
    /// Tails after transfers, joules.
    pub tail_j: f64,
    /// Transfers, joules.
    pub transfer_j: f64,
    /// RRC_IDLE (paging), joules.
    pub idle_j: f64,
    /// Packets that found the radio idle (= promotions).
    pub wakeups: u64,
    /// Bursts whose tail the device cut short (fast dormancy).
    pub releases: u64,
    /// Packets sent by the terminal.
    pub packets_up: u64,
    /// Packets received by the terminal.
    pub packets_down: u64,
    /// Bytes sent.
    pub bytes_up: u64,
    /// Bytes received.
    pub bytes_down: u64,
}

impl EnergyReport {
    /// Average power over the span, milliwatts (0 for an empty span).
    pub fn average_mw(&self) -> f64 {
        if self.span_ms == 0 { 0.0 } else { self.total_j * 1e6 / self.span_ms as f64 }
    }
}

impl fmt::Display for EnergyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.1} J over {:.1} s (promotion {:.1}, tail {:.1}, transfer {:.1}, idle {:.1}); {} wakeups, {} B up, {} B down",
            self.total_j,
            self.span_ms as f64 / 1000.0,
            self.promotion_j,
            self.tail_j,
            self.transfer_j,
            self.idle_j,
            self.wakeups,
            self.bytes_up,
            self.bytes_down
        )
    }
}

/// Prices packets one at a time, in time order, with constant memory: the streaming form
/// of [`lte_energy`], used by [`EnergyMeter`] so a day of traffic needs no stored trace.
#[derive(Clone, Debug)]
pub struct LteAccount {
    params: LteParams,
    start_ms: u64,
    last_at_ms: u64,
    /// End (ms, fractional) of the last transfer; `None` before the first packet.
    busy_until: Option<f64>,
    /// Totals up to `busy_until` (or `start_ms` before the first packet).
    done: EnergyReport,
    /// How long the current burst's tail lasts: `T_tail`, or less once the device asked for
    /// an early release ([`LteAccount::release_after`]).
    tail_ms: f64,
    /// The quiet time after which bursts are released early (`None`: the network's timer).
    release: Option<f64>,
}

impl LteAccount {
    /// An account starting at `start_ms` with the radio idle.
    pub fn new(params: LteParams, start_ms: u64) -> LteAccount {
        LteAccount {
            params,
            start_ms,
            last_at_ms: start_ms,
            busy_until: None,
            done: EnergyReport::default(),
            tail_ms: params.tail_ms,
            release: None,
        }
    }

    /// From `now_ms` on, the device releases the radio after `quiet_ms` without traffic (fast
    /// dormancy), or (`None`) leaves the tail to the network's inactivity timer. A tail
    /// already running longer than `quiet_ms` ends at `now_ms`.
    pub fn release_after(&mut self, now_ms: u64, quiet_ms: Option<u64>) {
        self.release = quiet_ms.map(|q| (q as f64).min(self.params.tail_ms));
        let now = now_ms.max(self.last_at_ms) as f64;
        self.tail_ms = match (self.release, self.busy_until) {
            (None, _) => self.params.tail_ms,
            (Some(q), Some(end)) if now - end < self.tail_ms => q.max(now - end),
            (Some(q), _) => q,
        };
    }

    /// Charges the whole tail of the burst that ended at `end`.
    fn close_tail(&mut self) {
        self.done.tail_j += self.params.tail_j(self.tail_ms);
        if self.tail_ms < self.params.tail_ms {
            self.done.releases += 1;
        }
    }

    /// The model's constants.
    pub fn params(&self) -> &LteParams {
        &self.params
    }

    /// Whether a packet at `at_ms` would find the radio idle (and so cost a wakeup).
    pub fn would_wake(&self, at_ms: u64) -> bool {
        match self.busy_until {
            None => true,
            Some(end) => at_ms.max(self.last_at_ms) as f64 - end > self.tail_ms,
        }
    }

    /// Adds one packet; a time before the previous packet's counts as the previous time.
    /// Returns whether it woke the radio.
    pub fn push(&mut self, packet: Packet) -> bool {
        let p = self.params;
        let at_ms = packet.at_ms.max(self.last_at_ms);
        self.last_at_ms = at_ms;
        let t = at_ms as f64;
        let woke = self.would_wake(at_ms);
        let start = if woke {
            let idle_from = match self.busy_until {
                Some(end) => {
                    self.close_tail();
                    end + self.tail_ms
                }
                None => self.start_ms as f64,
            };
            self.done.idle_j += p.idle_mw() * (t - idle_from).max(0.0) / 1e6;
            self.done.wakeups += 1;
            self.done.promotion_j += p.promotion_j();
            t + p.promotion_ms
        } else {
            let end = self.busy_until.unwrap_or(t);
            self.done.tail_j += p.tail_j(t - end);
            t.max(end)
        };
        let (ms, joules) = p.transfer(packet.direction, packet.bytes);
        self.done.transfer_j += joules;
        self.busy_until = Some(start + ms);
        // A new burst's tail follows the device's release policy again.
        self.tail_ms = self.release.unwrap_or(self.params.tail_ms);
        match packet.direction {
            Direction::Up => {
                self.done.packets_up += 1;
                self.done.bytes_up += u64::from(packet.bytes);
            }
            Direction::Down => {
                self.done.packets_down += 1;
                self.done.bytes_down += u64::from(packet.bytes);
            }
        }
        woke
    }

    /// The cost from the start up to `now_ms` (a running tail is charged up to `now_ms`,
    /// then idle time).
    pub fn report_at(&self, now_ms: u64) -> EnergyReport {
        self.report_at_exact(now_ms as f64)
    }

    /// [`LteAccount::report_at`] at a fractional time.
    fn report_at_exact(&self, now_ms: f64) -> EnergyReport {
        let p = &self.params;
        let mut r = self.done;
        let now = now_ms.max(self.last_at_ms as f64);
        match self.busy_until {
            None => r.idle_j += p.idle_mw() * (now - self.start_ms as f64).max(0.0) / 1e6,
            Some(end) if now > end => {
                let gap = now - end;
                r.tail_j += p.tail_j(gap.min(self.tail_ms));
                r.idle_j += p.idle_mw() * (gap - self.tail_ms).max(0.0) / 1e6;
                if gap >= self.tail_ms && self.tail_ms < p.tail_ms {
                    r.releases += 1;
                }
            }
            Some(_) => {}
        }
        r.span_ms = (now.ceil() as u64).saturating_sub(self.start_ms);
        r.total_j = r.promotion_j + r.tail_j + r.transfer_j + r.idle_j;
        r
    }

    /// When the radio would be idle again if nothing else is sent (ms); `None` before the
    /// first packet.
    pub fn quiet_at_ms(&self) -> Option<u64> {
        self.busy_until.map(|end| (end + self.tail_ms).ceil() as u64)
    }
}

/// Prices a trace with [`LteParams::HUANG_2012`], from its first packet to the end of the
/// last tail (so every burst pays its whole tail and no idle time follows). An empty trace
/// costs nothing. Use [`lte_energy_span`] to price a fixed window, idle time included.
pub fn lte_energy(trace: &[Packet]) -> EnergyReport {
    let Some(start) = trace.iter().map(|p| p.at_ms).min() else {
        return EnergyReport::default();
    };
    let account = account_of(trace, LteParams::HUANG_2012, start);
    match account.busy_until {
        Some(end) => account.report_at_exact(end + account.tail_ms),
        None => account.report_at(start),
    }
}

/// Prices a trace over `[start_ms, end_ms]` with `params`: the radio is idle at `start_ms`,
/// a tail running at `end_ms` is charged up to `end_ms`. Packets before `start_ms` count as
/// sent at `start_ms`.
pub fn lte_energy_span(trace: &[Packet], start_ms: u64, end_ms: u64, params: LteParams) -> EnergyReport {
    account_of(trace, params, start_ms).report_at(end_ms.max(start_ms))
}

/// [`lte_energy_span`] for a device that lets the radio go after `release_ms` of quiet (fast
/// dormancy; `None`: the network's tail).
pub fn lte_energy_span_releasing(
    trace: &[Packet],
    (start_ms, end_ms): (u64, u64),
    params: LteParams,
    release_ms: Option<u64>,
) -> EnergyReport {
    let mut sorted = trace.to_vec();
    sorted.sort_by_key(|p| p.at_ms);
    let mut account = LteAccount::new(params, start_ms);
    account.release_after(start_ms, release_ms);
    for packet in sorted {
        account.push(packet);
    }
    account.report_at(end_ms.max(start_ms))
}

fn account_of(trace: &[Packet], params: LteParams, start_ms: u64) -> LteAccount {
    let mut sorted = trace.to_vec();
    sorted.sort_by_key(|p| p.at_ms);
    let mut account = LteAccount::new(params, start_ms);
    for packet in sorted {
        account.push(packet);
    }
    account
}

/// The comparison case: a phone that fetches its own mail on a timer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Polling {
    /// Time between polls, ms (default 5 minutes).
    pub interval_ms: u64,
    /// Bytes sent per poll (default 1 KiB).
    pub request_bytes: u32,
    /// Bytes received per poll (default 2 KiB).
    pub response_bytes: u32,
    /// Time from request to response, ms (default 100 ms; it only moves the response
    /// within the same tail, so its value barely matters).
    pub rtt_ms: u64,
    /// Fast dormancy after each poll: release the radio after this much quiet (default
    /// `None`: mail clients leave the tail to the network, as the terminal's comparison
    /// assumed so far; `Some` gives the polling phone the same technique as the terminal).
    pub release_after_ms: Option<u64>,
}

impl Default for Polling {
    /// Every 5 minutes, 1 KiB up and 2 KiB down.
    ///
    /// Why those sizes: a poll that finds nothing new over an already-open TLS connection
    /// is a request with its headers and auth token (IMAP `NOOP`/`STATUS`, or an HTTPS
    /// `GET` with a bearer token and cookies: several hundred bytes) plus TCP/IP and TLS
    /// record overhead and TCP ACKs, ~1 KiB up; the answer is a status line, response
    /// headers and a small "no new mail" body with the same overheads, ~2 KiB down. A
    /// poll that needs a new TLS handshake (certificates: 3-5 KiB down) would be larger.
    /// The size hardly matters to the result: in the model these 3 KiB cost about 8 mJ of
    /// transfer, while each poll's promotion and tail cost about 12.8 J (a day of polls
    /// ≈ 5.35 kJ, of which ≈ 1.66 kJ is RRC_IDLE paging that any phone pays).
    fn default() -> Self {
        Polling {
            interval_ms: 5 * 60 * 1000,
            request_bytes: 1024,
            response_bytes: 2048,
            rtt_ms: 100,
            release_after_ms: None,
        }
    }
}

/// What a phone that polls as `poll` says costs over `span_ms` (from time 0, first poll at
/// 0), priced by the same model as the terminal ([`LteParams::HUANG_2012`]). For a day, pass
/// `24 * 3600 * 1000`.
pub fn polling_phone_day(span_ms: u64, poll: Polling) -> EnergyReport {
    let mut account = LteAccount::new(LteParams::HUANG_2012, 0);
    account.release_after(0, poll.release_after_ms);
    let interval = poll.interval_ms.max(1);
    let mut at = 0;
    while at < span_ms {
        account.push(Packet { at_ms: at, direction: Direction::Up, bytes: poll.request_bytes });
        account.push(Packet { at_ms: at + poll.rtt_ms, direction: Direction::Down, bytes: poll.response_bytes });
        at += interval;
    }
    account.report_at(span_ms)
}

/// When the terminal lets the radio go early (fast dormancy; see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RadioPolicy {
    /// Screen off: release after this much quiet (a notification's burst is over).
    pub asleep_release_ms: Option<u64>,
    /// Screen on: release after this much quiet (no frame, no input: the screen is static).
    pub static_release_ms: Option<u64>,
}

impl RadioPolicy {
    /// 1 s with the screen off, 3 s with a static screen on: a typist's next key (a second
    /// or two later) still finds the radio connected, a screen left alone lets it go.
    pub const FAST_DORMANCY: RadioPolicy =
        RadioPolicy { asleep_release_ms: Some(1_000), static_release_ms: Some(3_000) };
    /// No early release: every burst pays the network's whole tail.
    pub const NETWORK_TIMER: RadioPolicy = RadioPolicy { asleep_release_ms: None, static_release_ms: None };

    /// The quiet time after which the radio goes, for a screen that is off (`asleep`) or on.
    pub fn release_ms(&self, asleep: bool) -> Option<u64> {
        if asleep { self.asleep_release_ms } else { self.static_release_ms }
    }
}

impl Default for RadioPolicy {
    fn default() -> Self {
        RadioPolicy::FAST_DORMANCY
    }
}

/// The phone's non-radio power: screen and application processor.
///
/// Carroll and Heiser (USENIX ATC 2010) measured these per component on the Openmoko
/// Freerunner, but no readable copy of their tables could be checked, so the constants are
/// those Google ships for the **Nexus 5** in AOSP (`power_profile.xml` of
/// `device/lge/hammerhead`, whose commit says the values "were measured with Vout 4.0V"):
/// currents in mA, times 4.0 V here. Vendor measurements, not peer-reviewed; a phone of
/// the same years as the LTE radio model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceParams {
    /// Screen on at half brightness: `screen.on` 82.75 mA (lowest brightness) plus half of
    /// `screen.full` 201.16 mA (extra at full), at 4.0 V: 733.3 mW.
    pub screen_mw: f64,
    /// Application processor awake but idle (a wake lock held): `cpu.awake` 17.4 mA: 69.6 mW.
    pub cpu_awake_mw: f64,
    /// Application processor running: `cpu.active` 256.5 mA at 1497.6 MHz (one of its 14
    /// steps): 1026 mW on top of awake.
    pub cpu_active_mw: f64,
    /// Instructions a second the running processor retires (1497.6 MHz at one per cycle).
    pub cpu_ips: f64,
    /// How long the processor stays awake for a background wake (a sync, a notification
    /// shown): an assumption, 1 s, enough for the radio's promotion, the exchange and the
    /// app's work; the same for both phones.
    pub wake_ms: f64,
}

impl DeviceParams {
    /// The Nexus 5 constants above.
    pub const NEXUS_5: DeviceParams = DeviceParams {
        screen_mw: (82.75 + 201.16 / 2.0) * 4.0,
        cpu_awake_mw: 17.4 * 4.0,
        cpu_active_mw: 256.5 * 4.0,
        cpu_ips: 1.4976e9,
        wake_ms: 1_000.0,
    };

    /// What a device spends besides its radio: `screen_on_ms` with the screen on (the
    /// processor awake all that time), `instructions` run for the user (apps, decoding), and
    /// `background_wakes` wakes with the screen off.
    pub fn energy(&self, screen_on_ms: f64, instructions: f64, background_wakes: u64) -> DeviceEnergy {
        let screen_j = self.screen_mw * screen_on_ms / 1e6;
        let awake_ms = screen_on_ms + self.wake_ms * background_wakes as f64;
        let compute_s = instructions / self.cpu_ips;
        let cpu_j = (self.cpu_awake_mw * awake_ms / 1e3 + self.cpu_active_mw * compute_s) / 1e3;
        DeviceEnergy { screen_j, cpu_j, compute_s, background_wakes }
    }
}

/// A device's screen and processor energy over a span ([`DeviceParams::energy`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct DeviceEnergy {
    /// Screen, joules.
    pub screen_j: f64,
    /// Application processor (awake and running), joules.
    pub cpu_j: f64,
    /// Seconds of processor time spent computing.
    pub compute_s: f64,
    /// Background wakes paid for.
    pub background_wakes: u64,
}

/// Keeps at most this many packets of a live trace by default.
pub const DEFAULT_TRACE_LIMIT: usize = 100_000;

/// The live account of one terminal: counts and prices every packet as it happens.
///
/// Energy is priced as packets arrive ([`LteAccount`]), so memory stays constant however
/// long the session; the raw packets are also kept up to a limit for inspection
/// ([`EnergyMeter::trace`]).
pub struct EnergyMeter {
    clock: Clock,
    account: LteAccount,
    /// The same radio with the session's own packets only: whether it would be up without what rides along.
    session_only: LteAccount,
    trace: Vec<Packet>,
    trace_limit: usize,
    trace_dropped: u64,
    policy: RadioPolicy,
    asleep: bool,
}

impl fmt::Debug for EnergyMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnergyMeter")
            .field("account", &self.account)
            .field("trace_len", &self.trace.len())
            .field("trace_dropped", &self.trace_dropped)
            .finish()
    }
}

impl EnergyMeter {
    /// A meter reading `clock`, starting now with the radio idle, with the paper's model and
    /// the terminal's [`RadioPolicy::FAST_DORMANCY`], screen on.
    pub fn new(clock: Clock) -> EnergyMeter {
        EnergyMeter::with_params(clock, LteParams::HUANG_2012, DEFAULT_TRACE_LIMIT)
    }

    /// A meter with other model constants and trace limit (0 keeps no packets).
    pub fn with_params(clock: Clock, params: LteParams, trace_limit: usize) -> EnergyMeter {
        let start = clock();
        let mut meter = EnergyMeter {
            clock,
            account: LteAccount::new(params, start),
            session_only: LteAccount::new(params, start),
            trace: Vec::new(),
            trace_limit,
            trace_dropped: 0,
            policy: RadioPolicy::default(),
            asleep: false,
        };
        meter.set_policy(RadioPolicy::default());
        meter
    }

    /// When the radio is let go early from now on.
    pub fn set_policy(&mut self, policy: RadioPolicy) {
        self.policy = policy;
        let now = (self.clock)();
        self.account.release_after(now, policy.release_ms(self.asleep));
        self.session_only.release_after(now, policy.release_ms(self.asleep));
    }

    /// The screen went off (`true`) or on: the radio policy follows.
    pub fn set_asleep(&mut self, asleep: bool) {
        self.asleep = asleep;
        self.set_policy(self.policy);
    }

    /// Records a packet of the session's now; returns whether it woke the radio.
    pub fn record(&mut self, direction: Direction, bytes: usize) -> bool {
        let packet = self.packet(direction, bytes);
        self.session_only.push(packet);
        self.account.push(packet)
    }

    /// Records a packet that rides along the session's (a report): counted, but it keeps the radio up for
    /// nothing else that rides along ([`EnergyMeter::session_keeps_radio_up`]).
    pub fn record_riding(&mut self, direction: Direction, bytes: usize) -> bool {
        let packet = self.packet(direction, bytes);
        self.account.push(packet)
    }

    fn packet(&mut self, direction: Direction, bytes: usize) -> Packet {
        let packet = Packet { at_ms: (self.clock)(), direction, bytes: u32::try_from(bytes).unwrap_or(u32::MAX) };
        if self.trace.len() < self.trace_limit {
            self.trace.push(packet);
        } else {
            self.trace_dropped += 1;
        }
        packet
    }

    /// The cost so far, up to the clock's now.
    pub fn report(&self) -> EnergyReport {
        self.account.report_at((self.clock)())
    }

    /// The packets kept so far (at most the trace limit; see [`EnergyMeter::trace_dropped`]).
    pub fn trace(&self) -> &[Packet] {
        &self.trace
    }

    /// Packets counted but not kept because the trace was full.
    pub fn trace_dropped(&self) -> u64 {
        self.trace_dropped
    }

    /// The clock's reading now.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Whether the session's own traffic keeps the radio up at `at_ms` (connected, or in its tail), so that a
    /// packet then costs no wakeup, whatever rode along before.
    pub fn session_keeps_radio_up(&self, at_ms: u64) -> bool {
        !self.session_only.would_wake(at_ms) && !self.account.would_wake(at_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const P: LteParams = LteParams::HUANG_2012;

    fn up(at_ms: u64, bytes: u32) -> Packet {
        Packet { at_ms, direction: Direction::Up, bytes }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn isolated_packet_costs_promotion_and_tail() {
        let r = lte_energy(&[up(1_000, 100)]);
        assert_eq!(r.wakeups, 1);
        assert!(close(r.promotion_j, P.promotion_j()));
        assert!(close(r.tail_j, P.tail_j(P.tail_ms)));
        assert_eq!(r.idle_j, 0.0);
        assert!(r.transfer_j > 0.0 && r.transfer_j < 1e-3, "{r:?}");
        assert!(close(r.total_j, r.promotion_j + r.tail_j + r.transfer_j));
        // The numbers the paper's constants give: ~0.315 J promotion, ~12.47 J tail.
        assert!((0.31..0.32).contains(&r.promotion_j), "{r:?}");
        assert!((12.4..12.6).contains(&r.tail_j), "{r:?}");
    }

    #[test]
    fn two_packets_within_the_tail_cost_one_promotion() {
        let one = lte_energy(&[up(0, 100)]);
        let two = lte_energy(&[up(0, 100), up(5_000, 100)]);
        assert_eq!(two.wakeups, 1);
        assert!(close(two.promotion_j, one.promotion_j));
        // The second packet restarts the tail: 5 s of the first tail plus a whole tail.
        assert!(two.tail_j > one.tail_j && two.tail_j < one.tail_j + P.tail_j(5_000.0) + 1e-6);

        let apart = lte_energy(&[up(0, 100), up(60_000, 100)]);
        assert_eq!(apart.wakeups, 2);
        assert!(close(apart.promotion_j, 2.0 * one.promotion_j));
        assert!(apart.idle_j > 0.0);
    }

    #[test]
    fn empty_trace_costs_idle_power_times_time() {
        assert_eq!(lte_energy(&[]), EnergyReport::default());
        let day = 86_400_000;
        let r = lte_energy_span(&[], 0, day, P);
        assert_eq!(r.wakeups, 0);
        assert_eq!(r.promotion_j + r.tail_j + r.transfer_j, 0.0);
        assert!(close(r.total_j, P.idle_mw() * 86_400.0 / 1000.0));
        assert!((19.9..20.2).contains(&P.idle_mw()), "{}", P.idle_mw());
        assert_eq!(r.span_ms, day);
    }

    #[test]
    fn tail_is_charged_up_to_now_and_then_idle() {
        let mut a = LteAccount::new(P, 0);
        assert!(a.push(up(0, 10)));
        let mid = a.report_at(5_000);
        assert!(mid.tail_j > 0.0 && mid.tail_j < P.tail_j(P.tail_ms));
        assert_eq!(mid.idle_j, 0.0);
        let late = a.report_at(100_000);
        assert!(close(late.tail_j, P.tail_j(P.tail_ms)));
        assert!(late.idle_j > 0.0);
        assert!(!a.would_wake(10_000));
        assert!(a.would_wake(20_000));
    }

    #[test]
    fn transfers_queue_behind_each_other() {
        // 13 Mbit/s down: 1.625 MB take 1 s; a packet sent meanwhile waits, no tail between.
        let big = Packet { at_ms: 0, direction: Direction::Down, bytes: 1_625_000 };
        let r = lte_energy(&[big, up(500, 10)]);
        assert_eq!(r.wakeups, 1);
        assert!(close(r.tail_j, P.tail_j(P.tail_ms)));
        let (ms, j) = P.transfer(Direction::Down, 1_625_000);
        assert!(close(ms, 1000.0));
        assert!(close(j, (51.97 * 13.0 + 1288.04) / 1000.0));
    }

    #[test]
    fn polling_phone_day_wakes_every_poll() {
        let day = 86_400_000;
        let r = polling_phone_day(day, Polling::default());
        assert_eq!(r.wakeups, 288);
        assert_eq!(r.packets_up, 288);
        assert_eq!(r.bytes_down, 288 * 2048);
        let per_poll = P.promotion_j() + P.tail_j(P.tail_ms);
        assert!(r.total_j > 288.0 * per_poll, "{r}");
        // About 5.3 kJ a day with these constants.
        assert!((5_000.0..5_700.0).contains(&r.total_j), "{r}");
    }

    #[test]
    fn meter_uses_its_clock_and_counts_wakeups() {
        let now = Arc::new(AtomicU64::new(1_000));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || now.load(Ordering::Relaxed))
        };
        let mut m = EnergyMeter::with_params(clock, P, 2);
        assert!(m.record(Direction::Up, 100));
        now.store(2_000, Ordering::Relaxed);
        assert!(!m.record(Direction::Down, 200));
        now.store(60_000, Ordering::Relaxed);
        assert!(m.record(Direction::Down, 300));
        now.store(1_500, Ordering::Relaxed); // a clock going back counts as the last time
        let r = m.report();
        assert_eq!((r.wakeups, r.bytes_up, r.bytes_down, r.packets_down), (2, 100, 500, 2));
        assert_eq!(m.trace().len(), 2);
        assert_eq!(m.trace_dropped(), 1);
        assert_eq!(r.span_ms, 59_000);
    }

    #[test]
    fn fast_dormancy_cuts_the_tail_and_the_next_packet_pays_a_promotion() {
        let mut a = LteAccount::new(P, 0);
        a.release_after(0, Some(1_000));
        assert!(a.push(up(0, 10)));
        // Quiet for 1 s: released; a packet 5 s later wakes the radio again.
        assert!(a.would_wake(5_000));
        assert!(a.push(up(5_000, 10)));
        let r = a.report_at(20_000);
        assert_eq!((r.wakeups, r.releases), (2, 2));
        assert!(r.tail_j < 2.0 * P.tail_j(1_001.0) && r.tail_j > 2.0 * P.tail_j(999.0), "{r}");
        // Without it the second packet rides the first one's tail.
        let plain = lte_energy_span(&[up(0, 10), up(5_000, 10)], 0, 20_000, P);
        assert_eq!((plain.wakeups, plain.releases), (1, 0));
        assert!(r.total_j < plain.total_j, "{r} against {plain}");
        // Packets closer than the quiet time stay in one burst.
        let mut b = LteAccount::new(P, 0);
        b.release_after(0, Some(3_000));
        b.push(up(0, 10));
        assert!(!b.push(up(2_000, 10)));
        // A policy change mid-tail releases at once if the tail already ran longer.
        let mut c = LteAccount::new(P, 0);
        c.push(up(0, 10));
        c.release_after(5_000, Some(1_000));
        assert!(c.would_wake(5_001));
        let r = c.report_at(60_000);
        // (The transfer began after the 260 ms promotion: its tail had run 4.74 s at 5 s.)
        assert!((r.tail_j - P.tail_j(5_000.0 - P.promotion_ms)).abs() < 0.01, "{r}");
        assert_eq!(r.releases, 1);
    }

    #[test]
    fn a_polling_phone_with_fast_dormancy_wakes_as_often_for_less() {
        let day = 86_400_000;
        let plain = polling_phone_day(day, Polling::default());
        let fd = polling_phone_day(day, Polling { release_after_ms: Some(1_000), ..Polling::default() });
        assert_eq!(fd.wakeups, plain.wakeups);
        assert_eq!(fd.releases, 288);
        assert!(fd.total_j < plain.total_j / 2.0, "{fd} against {plain}");
    }

    #[test]
    fn the_meter_releases_sooner_with_the_screen_off() {
        let now = Arc::new(AtomicU64::new(0));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || now.load(Ordering::Relaxed))
        };
        let mut m = EnergyMeter::with_params(clock, P, 0);
        m.record(Direction::Down, 100);
        now.store(2_000, Ordering::Relaxed);
        assert!(!m.record(Direction::Down, 100), "screen on: 2 s of quiet keep the radio");
        m.set_asleep(true);
        now.store(3_500, Ordering::Relaxed);
        assert!(m.record(Direction::Down, 100), "screen off: 1.5 s of quiet released it");
        m.set_policy(RadioPolicy::NETWORK_TIMER);
        now.store(10_000, Ordering::Relaxed);
        assert!(!m.record(Direction::Down, 100), "the network's timer: 6.5 s is within the tail");
    }

    #[test]
    fn device_energy_adds_screen_awake_time_work_and_wakes() {
        let d = DeviceParams::NEXUS_5;
        assert!((d.screen_mw - 733.32).abs() < 0.01);
        let e = d.energy(60_000.0, d.cpu_ips, 10);
        assert!((e.screen_j - 44.0).abs() < 0.01, "{e:?}");
        // 70 s awake at 69.6 mW plus one second of work at 1026 mW.
        assert!((e.cpu_j - (0.0696 * 70.0 + 1.026)).abs() < 1e-9, "{e:?}");
        assert_eq!(e.background_wakes, 10);
        assert_eq!(d.energy(0.0, 0.0, 0), DeviceEnergy::default());
    }
}
