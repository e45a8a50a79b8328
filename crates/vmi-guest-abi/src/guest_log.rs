//! The lines a guest logs (`vmi.log`), held for the host to take (docs/GUEST_ABI.md).
//!
//! A guest is untrusted and may log in a loop, so the queue is bounded three ways: each line
//! is cut to [`MAX_LOG_LINE`] bytes, at most [`LOG_LINES_PER_SECOND`] lines are kept per
//! second of virtual time, and at most [`MAX_LOG_QUEUE`] lines wait for the host. What is
//! dropped is counted and reported by one line, so a reader knows lines are missing. Logs
//! are host output, not guest state: they are not in snapshots and nothing the guest can
//! observe depends on them.

use std::collections::VecDeque;

use vmi_engine::{LogLevel, LogLine};

/// Longest log line, in bytes; longer ones are cut.
pub const MAX_LOG_LINE: usize = 4096;
/// Most lines kept per second of virtual time; the rest of that second's are dropped.
pub const LOG_LINES_PER_SECOND: u32 = 50;
/// Most lines waiting for the host to take them; further lines are dropped.
pub const MAX_LOG_QUEUE: usize = 500;

const SECOND_NS: u64 = 1_000_000_000;

/// A phone's log queue.
#[derive(Debug, Default)]
pub struct GuestLog {
    lines: VecDeque<LogLine>,
    /// The virtual second `in_second` counts lines of.
    second: u64,
    in_second: u32,
    /// Lines dropped since the last report of drops.
    dropped: u64,
}

impl GuestLog {
    /// Keeps a line the guest logged at virtual time `at_ns`, or counts it as dropped.
    /// `bytes` is at most [`MAX_LOG_LINE`] long (the caller cut it).
    pub fn push(&mut self, level: LogLevel, at_ns: u64, bytes: &[u8]) {
        let second = at_ns / SECOND_NS;
        if second != self.second {
            self.second = second;
            self.in_second = 0;
        }
        // Two slots: the line, and the report of earlier drops that goes before it.
        if self.in_second >= LOG_LINES_PER_SECOND || self.lines.len() + 2 > MAX_LOG_QUEUE {
            self.dropped += 1;
            return;
        }
        self.report_drops(at_ns);
        self.in_second += 1;
        self.lines.push_back(LogLine { level, at_ns, text: clean(bytes) });
    }

    /// Takes every waiting line, oldest first, then a report of lines dropped since the
    /// last one (at `now_ns`), if any.
    pub fn take(&mut self, now_ns: u64) -> Vec<LogLine> {
        self.report_drops(now_ns);
        self.lines.drain(..).collect()
    }

    /// Lines waiting.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether no line waits.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn report_drops(&mut self, at_ns: u64) {
        if self.dropped > 0 {
            let n = self.dropped;
            self.dropped = 0;
            let text =
                format!("… {n} log line{} dropped (log limits: docs/GUEST_ABI.md)", if n == 1 { "" } else { "s" });
            self.lines.push_back(LogLine { level: LogLevel::Warn, at_ns, text });
        }
    }
}

/// UTF-8 with invalid bytes replaced and control characters turned into spaces: a guest
/// must not be able to forge lines of the host's log with a newline.
fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn lines_are_cleaned_and_taken_once() {
        let mut log = GuestLog::default();
        log.push(LogLevel::Info, 5, b"hello\nforged line\x1b[31m");
        log.push(LogLevel::Error, 6, b"bad \xff byte");
        let lines = log.take(7);
        assert_eq!(texts(&lines), ["hello forged line [31m", "bad \u{fffd} byte"]);
        assert_eq!((lines[0].level, lines[0].at_ns), (LogLevel::Info, 5));
        assert_eq!((lines[1].level, lines[1].at_ns), (LogLevel::Error, 6));
        assert!(log.take(8).is_empty());
    }

    #[test]
    fn a_flood_is_cut_per_virtual_second_and_reported() {
        let mut log = GuestLog::default();
        for i in 0..LOG_LINES_PER_SECOND + 30 {
            log.push(LogLevel::Debug, 100 + i as u64, b"spam");
        }
        // The next second: the first line kept carries the report of the drops before it.
        log.push(LogLevel::Info, SECOND_NS + 1, b"next second");
        let lines = log.take(SECOND_NS + 2);
        assert_eq!(lines.len(), LOG_LINES_PER_SECOND as usize + 2);
        let report = &lines[LOG_LINES_PER_SECOND as usize];
        assert_eq!(report.text, "… 30 log lines dropped (log limits: docs/GUEST_ABI.md)");
        assert_eq!((report.level, report.at_ns), (LogLevel::Warn, SECOND_NS + 1));
        assert_eq!(lines.last().map(|l| l.text.as_str()), Some("next second"));
    }

    #[test]
    fn an_untaken_queue_is_bounded_and_the_drops_reported_on_take() {
        let mut log = GuestLog::default();
        // One line per virtual second, never taken: only the queue bound applies.
        for i in 0..MAX_LOG_QUEUE as u64 + 100 {
            log.push(LogLevel::Info, i * SECOND_NS, b"line");
        }
        assert!(log.len() < MAX_LOG_QUEUE);
        let lines = log.take(u64::MAX);
        assert!(lines.len() <= MAX_LOG_QUEUE);
        let report = lines.last().expect("a report");
        let dropped = MAX_LOG_QUEUE as u64 + 100 - (lines.len() as u64 - 1);
        assert_eq!(report.text, format!("… {dropped} log lines dropped (log limits: docs/GUEST_ABI.md)"));
        assert!(log.take(u64::MAX).is_empty(), "a drop is reported once");
    }
}
