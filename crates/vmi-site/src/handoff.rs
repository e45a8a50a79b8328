//! Terminal sessions prepared at this site for phones that are moving here: make before break
//! (docs/MIGRATION.md, "The terminal's handoff").
//!
//! When a migration begins, the source gives this site a ticket for the move and tells its terminals to open a
//! connection here and `Join` with it while pre-copy runs. Such a connection is authenticated at once (the
//! token check, a round trip to the control service, stays out of the handoff) and then held: it reaches no
//! phone until the terminal's `Hello` on it, which follows the source's `Redirect` after the move committed.
//! A ticket is good for one move of one user's phone: it opens while that move arrives and closes with it,
//! and when the move is called off every connection joined with it is told `NotHere` and closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::watch;

/// Where a move that terminals may join stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// Arriving: pre-copy runs, the phone is not here yet.
    Arriving,
    /// Committed: the phone runs here.
    Committed,
    /// Called off: the phone stays where it was.
    CalledOff,
}

/// Most connections one move holds (the phone's own terminals: as many as may attach to it).
pub const MAX_JOINS: usize = crate::phone::MAX_SESSIONS;

/// The moves arriving at this site that terminals may join, by user.
#[derive(Default)]
pub struct Handoffs {
    /// User → (ticket, the move's state, which opening it is, connections joined so far).
    moves: Mutex<HashMap<String, Opened>>,
    opened: AtomicU64,
}

type Opened = (String, watch::Receiver<Move>, u64, Arc<AtomicUsize>);

/// One connection joined to a move; dropping it frees its place.
pub struct Joined(Arc<AtomicUsize>);

impl Drop for Joined {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handoffs {
    /// Opens `ticket` for `user`'s arriving phone (none for an empty ticket: a source that prepares nothing).
    /// The move is called off when the returned guard drops unless [`Handoff::committed`] said otherwise.
    pub fn open(&self, user: &str, ticket: &str) -> Option<Handoff<'_>> {
        if ticket.is_empty() {
            return None;
        }
        let (tx, rx) = watch::channel(Move::Arriving);
        let id = self.opened.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(user.to_string(), (ticket.to_string(), rx, id, Arc::new(AtomicUsize::new(0))));
        Some(Handoff { book: self, user: user.to_string(), tx, id })
    }

    /// How `user`'s move stands, for a terminal that joins with `ticket`, and its place among the move's
    /// connections; `None` when no such move arrives, or it holds [`MAX_JOINS`] connections already.
    pub fn join(&self, user: &str, ticket: &str) -> Option<(watch::Receiver<Move>, Joined)> {
        let moves = self.lock();
        let (open, state, _, joined) = moves.get(user)?;
        if !same(open.as_bytes(), ticket.as_bytes()) {
            return None;
        }
        if joined.fetch_add(1, Ordering::SeqCst) >= MAX_JOINS {
            joined.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some((state.clone(), Joined(joined.clone())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Opened>> {
        self.moves.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Compares two secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One open move: dropping it calls the move off (every joined connection is told) and closes its ticket.
pub struct Handoff<'a> {
    book: &'a Handoffs,
    user: String,
    tx: watch::Sender<Move>,
    id: u64,
}

impl Handoff<'_> {
    /// The phone runs here now: joined connections may say Hello; the ticket closes to new joins.
    pub fn committed(self) {
        self.tx.send_replace(Move::Committed);
    }
}

impl Drop for Handoff<'_> {
    fn drop(&mut self) {
        self.tx.send_if_modified(|m| {
            let arriving = *m == Move::Arriving;
            if arriving {
                *m = Move::CalledOff;
            }
            arriving
        });
        let mut moves = self.book.lock();
        // Only this move's entry: a later move of the same phone may have opened its own meanwhile.
        if moves.get(&self.user).is_some_and(|(_, _, id, _)| *id == self.id) {
            moves.remove(&self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_joins_its_own_move_only_and_closes_with_it() {
        let book = Handoffs::default();
        assert!(book.open("ann", "").is_none(), "no ticket, no prepared sessions");
        let move_in = book.open("ann", "t1").expect("open");
        assert!(book.join("ann", "t2").is_none(), "another ticket");
        assert!(book.join("bob", "t1").is_none(), "another user");
        assert!(book.join("ann", "t").is_none(), "a prefix");
        let (joined, _place) = book.join("ann", "t1").expect("joins");
        assert_eq!(*joined.borrow(), Move::Arriving);
        let places: Vec<_> = (1..MAX_JOINS).map(|_| book.join("ann", "t1").expect("room")).collect();
        assert!(book.join("ann", "t1").is_none(), "a move holds at most MAX_JOINS connections");
        drop(places);
        assert!(book.join("ann", "t1").is_some(), "a place freed is taken again");
        move_in.committed();
        assert_eq!(*joined.borrow(), Move::Committed, "a joined connection hears the commit");
        assert!(book.join("ann", "t1").is_none(), "spent once the move is over");

        let called_off = book.open("ann", "t3").expect("open");
        let (joined, _place) = book.join("ann", "t3").expect("joins");
        drop(called_off);
        assert_eq!(*joined.borrow(), Move::CalledOff);
        assert!(book.join("ann", "t3").is_none());
    }
}
