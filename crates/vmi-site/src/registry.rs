//! Which phones are on this site: running (with the link to each phone's task), arriving
//! (a migration or a restore staging one), leaving (a migration, checkout, restart or
//! restore in progress), and whether the site is closing. Marks are guards: dropping one
//! clears it, so no error path can leave a phone marked forever.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use crate::phone::PhoneLink;

/// The phones of one site.
pub struct PhoneRegistry {
    capacity: u32,
    running: RwLock<HashMap<String, PhoneLink>>,
    leaving: Mutex<HashSet<String>>,
    arriving: Mutex<HashSet<String>>,
    closing: AtomicBool,
    /// See [`PhoneRegistry::last_insert`].
    last_insert: Mutex<Option<std::time::Instant>>,
}

/// Why no phone more fits here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// The user's phone runs or arrives here already.
    Exists,
    /// The site is at its capacity.
    Full(u32),
}

impl PhoneRegistry {
    /// An empty registry for a site of `capacity` phones.
    pub fn new(capacity: u32) -> PhoneRegistry {
        PhoneRegistry {
            capacity,
            running: RwLock::new(HashMap::new()),
            leaving: Mutex::new(HashSet::new()),
            arriving: Mutex::new(HashSet::new()),
            closing: AtomicBool::new(false),
            last_insert: Mutex::new(None),
        }
    }

    /// When a phone last started running here (or came back after a failed stop): a list of placed users that
    /// found every phone here on it after that instant still finds them all (no phone is new to it).
    pub fn last_insert(&self) -> Option<std::time::Instant> {
        *self.last_insert.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note_insert(&self) {
        *self.last_insert.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    }

    /// The link to `user`'s phone, if it runs here.
    pub fn get(&self, user: &str) -> Option<PhoneLink> {
        self.running.read().unwrap_or_else(|p| p.into_inner()).get(user).cloned()
    }

    /// Records a phone that now runs here (one whose stop failed goes back).
    pub fn insert(&self, user: &str, link: PhoneLink) {
        self.running.write().unwrap_or_else(|p| p.into_inner()).insert(user.to_string(), link);
        self.note_insert();
    }

    /// Records a phone that starts running here, with the link `start` makes, unless the
    /// site is closing: then `start` is not called and false is returned, so the caller
    /// saves the phone instead. Asked under the same lock [`close`](Self::close) takes,
    /// so no phone can start after the closing site collected the phones to save.
    pub fn insert_unless_closing(&self, user: &str, start: impl FnOnce() -> PhoneLink) -> bool {
        let mut running = self.running.write().unwrap_or_else(|p| p.into_inner());
        if self.is_closing() {
            return false;
        }
        running.insert(user.to_string(), start());
        self.note_insert();
        true
    }

    /// Takes `user`'s phone out (it moved, was checked out, or is being replaced).
    pub fn remove(&self, user: &str) -> Option<PhoneLink> {
        self.running.write().unwrap_or_else(|p| p.into_inner()).remove(user)
    }

    /// Users whose phones run here, sorted.
    pub fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = self.running.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        users.sort();
        users
    }

    /// Users whose phones started here before `before` and are not in `placed`, sorted: what a heartbeat's list
    /// of placed users judges (one read of the map, nothing copied for the phones that are placed here).
    pub fn started_before_and_not_in(&self, before: std::time::Instant, placed: &HashSet<String>) -> Vec<String> {
        let running = self.running.read().unwrap_or_else(|p| p.into_inner());
        let mut users: Vec<String> = running
            .iter()
            .filter(|(user, link)| link.started() < before && !placed.contains(user.as_str()))
            .map(|(user, _)| user.clone())
            .collect();
        users.sort();
        users
    }

    /// How many phones run here.
    pub fn count(&self) -> usize {
        self.running.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Marks the site as closing (no phone may arrive after it) and takes every phone out.
    pub fn close(&self) -> Vec<(String, PhoneLink)> {
        let mut running = self.running.write().unwrap_or_else(|p| p.into_inner());
        self.closing.store(true, Ordering::SeqCst);
        running.drain().collect()
    }

    /// Whether the site is shutting down.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Marks `user`'s phone as leaving; None if it already is (and `check` is not run).
    /// Else `check` runs first, under the
    /// same lock (a checkout and a migration ask each other's question there, so a
    /// phone is never both at once); its error is returned as is.
    pub fn leave<E>(&self, user: &str, check: impl FnOnce() -> Result<(), E>) -> Result<Option<LeavingMark<'_>>, E> {
        let mut leaving = self.leaving.lock().unwrap_or_else(|p| p.into_inner());
        if leaving.contains(user) {
            return Ok(None);
        }
        check()?;
        leaving.insert(user.to_string());
        Ok(Some(LeavingMark { registry: self, user: user.to_string() }))
    }

    /// Marks `user`'s phone as leaving; None if it already is.
    pub fn mark_leaving(&self, user: &str) -> Option<LeavingMark<'_>> {
        self.leave::<()>(user, || Ok(())).ok().flatten()
    }

    /// Whether `user`'s phone is leaving right now.
    pub fn is_leaving(&self, user: &str) -> bool {
        self.leaving.lock().unwrap_or_else(|p| p.into_inner()).contains(user)
    }

    /// Whether `user`'s phone is arriving right now (a migration or a restore staging it).
    pub fn is_arriving(&self, user: &str) -> bool {
        self.arriving.lock().unwrap_or_else(|p| p.into_inner()).contains(user)
    }

    /// Marks `user`'s phone as arriving; None if it already is.
    pub fn arrive(&self, user: &str) -> Option<ArrivalMark<'_>> {
        let mut arriving = self.arriving.lock().unwrap_or_else(|p| p.into_inner());
        arriving.insert(user.to_string()).then(|| ArrivalMark { registry: self, user: user.to_string() })
    }

    /// Whether a new phone for `user` fits: not here, not arriving, below capacity.
    pub fn room_for_new(&self, user: &str) -> Result<(), NoRoom> {
        let arriving = self.arriving.lock().unwrap_or_else(|p| p.into_inner()).contains(user);
        if self.get(user).is_some() || arriving {
            return Err(NoRoom::Exists);
        }
        if self.count() as u32 >= self.capacity {
            return Err(NoRoom::Full(self.capacity));
        }
        Ok(())
    }

    /// Whether `user`'s phone, marked as arriving, fits: phones arriving count against
    /// capacity (this one excepted).
    pub fn room_for_arrival(&self, user: &str) -> Result<(), NoRoom> {
        if self.get(user).is_some() {
            return Err(NoRoom::Exists);
        }
        let arriving = self.arriving.lock().unwrap_or_else(|p| p.into_inner()).len().saturating_sub(1);
        if (self.count() + arriving) as u32 >= self.capacity {
            return Err(NoRoom::Full(self.capacity));
        }
        Ok(())
    }
}

/// A phone marked as leaving; the mark goes when this is dropped.
pub struct LeavingMark<'a> {
    registry: &'a PhoneRegistry,
    user: String,
}

impl Drop for LeavingMark<'_> {
    fn drop(&mut self) {
        self.registry.leaving.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.user);
    }
}

/// A phone marked as arriving; the mark goes when this is dropped.
pub struct ArrivalMark<'a> {
    registry: &'a PhoneRegistry,
    user: String,
}

impl Drop for ArrivalMark<'_> {
    fn drop(&mut self) {
        self.registry.arriving.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_clear_when_dropped_and_refuse_a_second_holder() {
        let r = PhoneRegistry::new(1);
        let first = r.leave::<()>("ann", || Ok(())).expect("check").expect("first mark");
        assert!(r.is_leaving("ann"));
        assert!(r.leave::<()>("ann", || Ok(())).expect("check").is_none(), "a second mark is refused");
        assert_eq!(r.leave("bob", || Err("refused")).err(), Some("refused"), "the check's error comes back");
        assert!(!r.is_leaving("bob"));
        drop(first);
        assert!(!r.is_leaving("ann"));

        let arriving = r.arrive("ann").expect("arrival mark");
        assert!(r.arrive("ann").is_none());
        assert_eq!(r.room_for_new("ann"), Err(NoRoom::Exists), "an arriving phone exists");
        assert_eq!(r.room_for_arrival("ann"), Ok(()), "the arriving phone itself fits");
        let _other = r.arrive("bob").expect("second arrival");
        assert_eq!(r.room_for_arrival("ann"), Err(NoRoom::Full(1)), "the other arrival takes the one place");
        drop(arriving);
        assert_eq!(r.room_for_new("ann"), Ok(()), "a new phone counts running phones only");
    }

    #[test]
    fn no_phone_starts_once_the_site_is_closing() {
        let r = PhoneRegistry::new(4);
        assert!(r.close().is_empty());
        let started = r.insert_unless_closing("ann", || unreachable!("a closing site starts no phone"));
        assert!(!started, "the caller saves the phone instead");
        assert!(r.users().is_empty());
    }
}
