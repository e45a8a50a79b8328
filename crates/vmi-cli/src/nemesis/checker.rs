//! The checker of `vmi nemesis`: reads what every process recorded (sites' applied inputs, control replicas'
//! placement moves, terminals' typed and durable inputs), the placement history etcd kept, and what was found at
//! the end, and says whether the four safety and liveness properties held (docs/CONTROL-PLANE.md):
//!
//! - (a) `one_owner`: never two sites applying input for the same phone in overlapping epochs. Inputs applied at a
//!   known epoch: one site per epoch, epochs rising with time. And wherever the site applying a phone's input
//!   changes (site A's last input before site B's first), a placement move to B committed between the two.
//! - (b) `durable_inputs`: every character a terminal typed and saw acknowledged as durable is in the phone's
//!   final notes exactly once and in order: the notes are a prefix of what was typed, at least as long as what
//!   was durable.
//! - (c) `phones_live`: every phone ends running on the site it is placed on, its terminal attached there with
//!   nothing left unacknowledged, once the faults healed.
//! - (d) `epochs_match`: no placement moved without a matching epoch: in etcd's history of each placement the
//!   epoch never falls and rises with every change of site; every epoch a site applied input at was given to that
//!   site; every move a replica saw succeed is in etcd's history.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Value, json};
use vmi_control_api::model::Placement;

/// What was found about one phone once the faults healed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Final {
    /// The phone's notes, read from the site it is placed on (`None`: none answered).
    pub notes: Option<String>,
    /// Why the notes could not be read, when they could not.
    pub notes_unread: Option<String>,
    /// The site the placement names.
    pub placed_on: Option<String>,
    /// The site whose phone list has it running.
    pub running_on: Option<String>,
    /// The site the user's terminal is attached to.
    pub terminal_on: Option<String>,
    /// Inputs the terminal still holds unacknowledged as durable.
    pub pending_inputs: usize,
}

/// Everything the checker looks at.
#[derive(Debug, Default)]
pub struct Observed {
    /// Every history record of every process, in time order (see `vmi_control_api::history`).
    pub records: Vec<Value>,
    /// Each user's placement versions as etcd kept them, oldest first, with their revision.
    pub placements: BTreeMap<String, Vec<(i64, Placement)>>,
    /// Each user's end state.
    pub finals: BTreeMap<String, Final>,
}

/// One property's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Whether it held.
    pub passed: bool,
    /// What was checked (counts).
    pub checked: Value,
    /// Each violation found, at most [`MAX_SHOWN`] of them.
    pub violations: Vec<String>,
}

/// Violations listed per property at most (the count is in `checked`).
pub const MAX_SHOWN: usize = 20;

impl Verdict {
    fn new(checked: Value, violations: Vec<String>) -> Verdict {
        let mut checked = checked;
        checked["violations"] = violations.len().into();
        Verdict { passed: violations.is_empty(), checked, violations: violations.into_iter().take(MAX_SHOWN).collect() }
    }
}

/// The four verdicts.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whether all four held.
    pub passed: bool,
    /// (a)
    pub one_owner: Verdict,
    /// (b)
    pub durable_inputs: Verdict,
    /// (c)
    pub phones_live: Verdict,
    /// (d)
    pub epochs_match: Verdict,
}

/// Checks `observed` (see the module doc).
pub fn check(observed: &Observed) -> Report {
    let one_owner = one_owner(observed);
    let durable_inputs = durable_inputs(observed);
    let phones_live = phones_live(observed);
    let epochs_match = epochs_match(observed);
    let passed = one_owner.passed && durable_inputs.passed && phones_live.passed && epochs_match.passed;
    Report { passed, one_owner, durable_inputs, phones_live, epochs_match }
}

fn at(r: &Value) -> u64 {
    r["at_us"].as_u64().unwrap_or(0)
}

/// The earliest an operation may have happened: its invocation, when recorded (a site's apply records the time
/// before it, and the record's own time after it; a process paused in between records the apply late).
fn invoked(r: &Value) -> u64 {
    r["invoked_us"].as_u64().unwrap_or_else(|| at(r))
}

fn text<'a>(r: &'a Value, field: &str) -> &'a str {
    r[field].as_str().unwrap_or("")
}

/// `user`'s records of operation `op`, in time order.
fn of<'a>(observed: &'a Observed, op: &'a str, user: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    observed.records.iter().filter(move |r| r["op"] == op && r["user"] == user)
}

fn users(observed: &Observed) -> BTreeSet<String> {
    let mut users: BTreeSet<String> = observed.finals.keys().cloned().collect();
    users.extend(observed.placements.keys().cloned());
    users
}

/// When a placement move recorded by a replica was invoked and completed, and where to (`unknown` outcomes may
/// have committed any time after their invocation).
fn moves_to<'a>(observed: &'a Observed, user: &'a str) -> impl Iterator<Item = (u64, u64, String)> + 'a {
    of(observed, "placement", user).filter_map(|r| {
        let outcome = &r["outcome"];
        let invoked = r["invoked_us"].as_u64().unwrap_or(0);
        match outcome["type"].as_str() {
            Some("ok") => Some((invoked, at(r), text(outcome, "site").to_owned())),
            Some("unknown") => {
                let to = r["request"]["to"].as_str().or(r["request"]["site"].as_str()).unwrap_or("");
                Some((invoked, u64::MAX, to.to_owned()))
            }
            _ => None,
        }
    })
}

fn one_owner(observed: &Observed) -> Verdict {
    let mut violations = Vec::new();
    let (mut applied, mut handoffs, mut without_epoch) = (0usize, 0usize, 0usize);
    for user in users(observed) {
        let applies: Vec<&Value> = of(observed, "apply", &user).collect();
        applied += applies.len();
        // One site per epoch; epochs never fall as time passes.
        let mut site_of_epoch: BTreeMap<u64, &str> = BTreeMap::new();
        let mut highest: Option<(u64, &Value)> = None;
        for r in &applies {
            let Some(epoch) = r["epoch"].as_u64() else {
                without_epoch += 1;
                continue;
            };
            let site = text(r, "process");
            match site_of_epoch.get(&epoch) {
                Some(other) if *other != site => violations.push(format!(
                    "{user}: {other} and {site} both applied input at epoch {epoch} (seq {} at {} µs)",
                    r["seq"],
                    at(r)
                )),
                _ => {
                    site_of_epoch.insert(epoch, site);
                }
            }
            match highest {
                // Only if the higher epoch's apply surely came first (it completed before this one began).
                Some((h, by)) if epoch < h && at(by) < invoked(r) => violations.push(format!(
                    "{user}: {site} applied seq {} at epoch {epoch} ({} µs) after {} applied at epoch {h} ({} µs)",
                    r["seq"],
                    at(r),
                    text(by, "process"),
                    at(by)
                )),
                Some((h, _)) if epoch <= h => {}
                _ => highest = Some((epoch, r)),
            }
        }
        // One site, one phone task at a time: two tasks of the phone applying input in overlapping spans would be
        // two owners inside one site.
        let mut spans: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
        for r in &applies {
            if let Some(task) = r["task"].as_str() {
                let span = spans.entry((text(r, "process"), task)).or_insert((invoked(r), at(r)));
                span.1 = at(r);
            }
        }
        let spans: Vec<_> = spans.into_iter().collect();
        for (i, ((site, a), (a0, a1))) in spans.iter().enumerate() {
            for ((other_site, b), (b0, b1)) in &spans[i + 1..] {
                if site == other_site && a0 < b1 && b0 < a1 {
                    violations.push(format!(
                        "{user}: two phone tasks on {site} ({a}: {a0}..{a1} µs, {b}: {b0}..{b1} µs) applied input at once"
                    ));
                }
            }
        }
        // Every change of the applying site has a move to the new site committed in between.
        for pair in applies.windows(2) {
            let (last, first) = (pair[0], pair[1]);
            let (from, to) = (text(last, "process"), text(first, "process"));
            if from == to {
                continue;
            }
            handoffs += 1;
            // Somewhere in the spans: the move after the old site's last apply began, before the new one's first
            // ended.
            let moved = moves_to(observed, &user)
                .any(|(from_us, until_us, site)| site == to && from_us < at(first) && until_us > invoked(last));
            if !moved {
                violations.push(format!(
                    "{user}: {to} applied seq {} at {} µs after {from} applied seq {} at {} µs, with no placement \
                     move to {to} committed in between",
                    first["seq"],
                    at(first),
                    last["seq"],
                    at(last)
                ));
            }
        }
    }
    Verdict::new(json!({ "inputs_applied": applied, "handoffs": handoffs, "without_epoch": without_epoch }), violations)
}

fn durable_inputs(observed: &Observed) -> Verdict {
    let mut violations = Vec::new();
    let (mut typed_total, mut durable_total) = (0usize, 0usize);
    for (user, end) in &observed.finals {
        // Input number → the character it typed (None: a touch).
        let mut typed: BTreeMap<u64, Option<char>> = BTreeMap::new();
        let mut durable = 0u64;
        for r in observed.records.iter().filter(|r| r["user"] == user.as_str() && r["process"] == "terminal") {
            match r["op"].as_str() {
                Some("type") => {
                    let c = r["char"].as_str().and_then(|s| s.chars().next());
                    typed.insert(r["seq"].as_u64().unwrap_or(0), c);
                }
                Some("durable") => durable = durable.max(r["seq"].as_u64().unwrap_or(0)),
                _ => {}
            }
        }
        let all: String = typed.values().flatten().collect();
        let durable_chars = typed.range(..=durable).filter(|(_, c)| c.is_some()).count();
        typed_total += all.chars().count();
        durable_total += durable_chars;
        let Some(notes) = &end.notes else {
            let why = end.notes_unread.as_deref().unwrap_or("no placement");
            violations
                .push(format!("{user}: the final notes could not be read ({durable_chars} characters durable): {why}"));
            continue;
        };
        let common = all.chars().zip(notes.chars()).take_while(|(a, b)| a == b).count();
        let held = notes.chars().count();
        if common < held {
            let near: String = notes.chars().skip(common.saturating_sub(5)).take(15).collect();
            // Input numbers of the typed characters, in order: to name what went wrong by the terminal's numbers.
            let seqs: Vec<u64> = typed.iter().filter(|(_, c)| c.is_some()).map(|(s, _)| *s).collect();
            let seq = |i: usize| seqs.get(i).map_or_else(|| "?".to_owned(), u64::to_string);
            let what = match resumes_at(&all, notes, common) {
                Some(p) if p > common => format!(
                    "typed characters {common}..{p} are missing (inputs {}..={}, {} characters)",
                    seq(common),
                    seq(p - 1),
                    p - common
                ),
                Some(p) if p < common => format!(
                    "typed characters {p}..{common} are there twice (inputs {}..={}, {} characters)",
                    seq(p),
                    seq(common - 1),
                    common - p
                ),
                _ => "a character lost, doubled or out of order".to_owned(),
            };
            violations
                .push(format!("{user}: the notes part from what was typed at character {common} (…{near}…): {what}"));
        } else if held < durable_chars {
            violations.push(format!(
                "{user}: the notes hold {held} characters, but {durable_chars} were acknowledged as durable"
            ));
        }
    }
    Verdict::new(json!({ "typed": typed_total, "durable": durable_total }), violations)
}

/// Where in `typed` the notes carry on after they part from it at character `at`: the first place the next
/// characters of the notes (up to 16) were typed, if any.
fn resumes_at(typed: &str, notes: &str, at: usize) -> Option<usize> {
    let typed: Vec<char> = typed.chars().collect();
    let next: Vec<char> = notes.chars().skip(at).take(16).collect();
    if next.is_empty() {
        return None;
    }
    typed.windows(next.len()).position(|w| w == next.as_slice())
}

fn phones_live(observed: &Observed) -> Verdict {
    let mut violations = Vec::new();
    for (user, end) in &observed.finals {
        match (&end.placed_on, &end.running_on, &end.terminal_on) {
            (None, _, _) => violations.push(format!("{user}: no placement could be read")),
            (Some(p), r, _) if r.as_ref() != Some(p) => {
                violations.push(format!("{user}: placed on {p} but running on {r:?}"));
            }
            (Some(p), _, t) if t.as_ref() != Some(p) => {
                violations.push(format!("{user}: placed on {p} but its terminal is attached to {t:?}"));
            }
            _ if end.pending_inputs > 0 => {
                violations.push(format!("{user}: {} inputs never acknowledged as durable", end.pending_inputs));
            }
            _ => {}
        }
    }
    Verdict::new(json!({ "phones": observed.finals.len() }), violations)
}

fn epochs_match(observed: &Observed) -> Verdict {
    let mut violations = Vec::new();
    let mut versions = 0usize;
    for user in users(observed) {
        let history = observed.placements.get(&user).map(Vec::as_slice).unwrap_or_default();
        versions += history.len();
        for pair in history.windows(2) {
            let ((r0, p0), (r1, p1)) = (&pair[0], &pair[1]);
            if p1.epoch < p0.epoch || (p1.site != p0.site && p1.epoch <= p0.epoch) {
                violations.push(format!(
                    "{user}: placement {}@{} (revision {r0}) became {}@{} (revision {r1}) without a higher epoch",
                    p0.site, p0.epoch, p1.site, p1.epoch
                ));
            }
        }
        let placed: BTreeSet<(&str, u64)> = history.iter().map(|(_, p)| (p.site.as_str(), p.epoch)).collect();
        let mut unplaced = BTreeSet::new();
        for r in of(observed, "apply", &user) {
            if let Some(epoch) = r["epoch"].as_u64()
                && !placed.contains(&(text(r, "process"), epoch))
            {
                unplaced.insert((text(r, "process").to_owned(), epoch));
            }
        }
        for (site, epoch) in unplaced {
            violations.push(format!("{user}: {site} applied input at epoch {epoch}, which never placed it there"));
        }
        for r in of(observed, "placement", &user) {
            let outcome = &r["outcome"];
            if outcome["type"] == "ok" {
                let (site, epoch) = (text(outcome, "site"), outcome["epoch"].as_u64().unwrap_or(0));
                if !placed.contains(&(site, epoch)) {
                    violations.push(format!(
                        "{user}: {} saw its move to {site}@{epoch} succeed, but etcd has no such placement",
                        text(r, "process")
                    ));
                }
            }
        }
    }
    let moves = observed.records.iter().filter(|r| r["op"] == "placement").count();
    Verdict::new(json!({ "placement_versions": versions, "moves_recorded": moves }), violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(site: &str, at_us: u64, seq: u64, epoch: Option<u64>) -> Value {
        json!({ "at_us": at_us, "process": site, "op": "apply", "user": "u", "device": "1", "seq": seq, "epoch": epoch })
    }

    fn moved(kind: &str, invoked: u64, done: u64, site: &str, epoch: u64) -> Value {
        json!({ "at_us": done, "process": "control", "op": "placement", "kind": kind, "user": "u", "invoked_us": invoked,
            "request": { "to": site }, "outcome": { "type": "ok", "site": site, "epoch": epoch } })
    }

    fn typed(seq: u64, c: Option<char>) -> Value {
        json!({ "at_us": seq * 10, "process": "terminal", "op": "type", "user": "u", "seq": seq,
            "char": c.map(String::from) })
    }

    fn durable(seq: u64) -> Value {
        json!({ "at_us": seq * 10 + 5, "process": "terminal", "op": "durable", "user": "u", "seq": seq })
    }

    fn placement(site: &str, epoch: u64) -> Placement {
        Placement { site: site.into(), epoch }
    }

    /// A clean run: typed "abc" after a touch, a failover from site-a to site-b at epoch 2.
    fn clean() -> Observed {
        let mut records = vec![
            typed(1, None),
            typed(2, Some('a')),
            typed(3, Some('b')),
            typed(4, Some('c')),
            apply("site-a", 11, 1, Some(1)),
            apply("site-a", 21, 2, Some(1)),
            durable(2),
            moved("failover", 25, 28, "site-b", 2),
            apply("site-b", 31, 3, Some(2)),
            apply("site-b", 41, 4, None),
            durable(4),
        ];
        records.sort_by_key(at);
        let end = Final {
            notes: Some("abc".into()),
            notes_unread: None,
            placed_on: Some("site-b".into()),
            running_on: Some("site-b".into()),
            terminal_on: Some("site-b".into()),
            pending_inputs: 0,
        };
        Observed {
            records,
            placements: BTreeMap::from([("u".into(), vec![(5, placement("site-a", 1)), (9, placement("site-b", 2))])]),
            finals: BTreeMap::from([("u".into(), end)]),
        }
    }

    #[test]
    fn a_clean_history_passes_every_check() {
        let report = check(&clean());
        assert!(report.passed, "{report:#?}");
        assert_eq!(report.one_owner.checked["handoffs"], 1);
        assert_eq!(report.durable_inputs.checked["durable"], 3);
    }

    #[test]
    fn two_sites_applying_in_one_epoch_or_out_of_order_are_caught() {
        let mut o = clean();
        o.records.push(apply("site-a", 35, 3, Some(2)));
        o.records.sort_by_key(at);
        let report = check(&o);
        assert!(!report.one_owner.passed);
        assert!(report.one_owner.violations.iter().any(|v| v.contains("both applied input at epoch 2")), "{report:#?}");

        let mut o = clean();
        o.records.push(apply("site-a", 45, 5, Some(1)));
        o.records.sort_by_key(at);
        let report = check(&o);
        assert!(report.one_owner.violations.iter().any(|v| v.contains("after site-b applied at epoch 2")));
    }

    #[test]
    fn two_tasks_of_one_phone_on_one_site_at_once_are_caught() {
        let mut o = clean();
        let with_task = |mut r: Value, task: &str| {
            r["task"] = task.into();
            r
        };
        o.records.retain(|r| r["op"] != "apply");
        o.records.extend([
            with_task(apply("site-a", 11, 1, Some(1)), "7-1"),
            with_task(apply("site-a", 21, 2, Some(1)), "7-2"),
            with_task(apply("site-a", 22, 3, Some(1)), "7-1"),
        ]);
        o.records.sort_by_key(at);
        let report = check(&o);
        assert!(report.one_owner.violations.iter().any(|v| v.contains("two phone tasks on site-a")), "{report:#?}");
    }

    #[test]
    fn a_handoff_without_a_move_committed_in_between_is_caught() {
        let mut o = clean();
        // The move completed only after site-b already applied input.
        o.records.retain(|r| r["op"] != "placement");
        o.records.push(moved("failover", 32, 36, "site-b", 2));
        o.records.sort_by_key(at);
        let report = check(&o);
        assert!(!report.one_owner.passed);
        assert!(report.one_owner.violations[0].contains("no placement move to site-b"), "{report:#?}");

        // A site paused between applying an input and recording it records it late: applied before the move
        // began (its invocation says so), it is no violation.
        let mut o = clean();
        o.records.retain(|r| !(r["op"] == "apply" && r["seq"] == 2));
        let mut late = apply("site-a", 29, 2, Some(1));
        late["invoked_us"] = 20.into();
        o.records.push(late);
        o.records.sort_by_key(at);
        let report = check(&o);
        assert!(report.one_owner.passed, "{report:#?}");
    }

    #[test]
    fn a_lost_doubled_or_reordered_character_is_caught() {
        for (notes, words) in [
            ("ab", "were acknowledged as durable"),
            ("abbc", "typed characters 1..2 are there twice (inputs 3..=3, 1 characters)"),
            ("ac", "typed characters 1..2 are missing (inputs 3..=3, 1 characters)"),
            ("acb", "lost, doubled or out of order"),
        ] {
            let mut o = clean();
            o.finals.get_mut("u").expect("u").notes = Some(notes.into());
            let report = check(&o);
            assert!(!report.durable_inputs.passed, "{notes}");
            assert!(report.durable_inputs.violations[0].contains(words), "{notes}: {report:#?}");
        }
        // Characters not yet durable may be missing from the notes.
        let mut o = clean();
        o.records.retain(|r| !(r["op"] == "durable" && r["seq"] == 4));
        o.finals.get_mut("u").expect("u").notes = Some("ab".into());
        assert!(check(&o).durable_inputs.passed);
    }

    #[test]
    fn a_phone_not_running_where_placed_or_unreachable_is_caught() {
        let mut o = clean();
        o.finals.get_mut("u").expect("u").running_on = None;
        assert!(!check(&o).phones_live.passed);
        let mut o = clean();
        o.finals.get_mut("u").expect("u").terminal_on = Some("site-a".into());
        assert!(!check(&o).phones_live.passed);
        let mut o = clean();
        o.finals.get_mut("u").expect("u").pending_inputs = 2;
        assert!(!check(&o).phones_live.passed);
    }

    #[test]
    fn a_placement_moved_without_a_higher_epoch_or_input_at_an_unplaced_epoch_is_caught() {
        let mut o = clean();
        o.placements.insert("u".into(), vec![(5, placement("site-a", 1)), (9, placement("site-b", 1))]);
        let report = check(&o);
        assert!(report.epochs_match.violations.iter().any(|v| v.contains("without a higher epoch")), "{report:#?}");
        assert!(report.epochs_match.violations.iter().any(|v| v.contains("site-b applied input at epoch 2")));
        assert!(report.epochs_match.violations.iter().any(|v| v.contains("etcd has no such placement")));
    }
}
