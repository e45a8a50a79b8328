//! One-time pairing codes: how a new device (the user's phone was lost) joins the same
//! phone. An operator (`vmi user pair-code USER`) or another signed-in device asks for a
//! code; the new device trades it, once, for its own device token.
//!
//! Codes live in memory for [`PAIR_CODE_TTL_MS`]: a restart of the control service simply
//! voids the codes in flight (the user asks again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vmi_control_api::model::PairCode;

use crate::ControlError;

/// How long a pairing code is valid.
pub const PAIR_CODE_TTL_MS: u64 = 10 * 60 * 1000;
/// Most codes outstanding at once (old ones are dropped first).
const MAX_CODES: usize = 10_000;
/// Most codes outstanding for one user: a user's own oldest goes first, so no one user's requests can push
/// everyone else's codes out.
pub const MAX_CODES_PER_USER: usize = 5;

/// The codes outstanding; cheap to clone.
#[derive(Clone, Default)]
pub struct PairCodes {
    codes: Arc<Mutex<HashMap<String, (String, u64)>>>,
}

impl PairCodes {
    /// An empty registry.
    pub fn new() -> PairCodes {
        PairCodes::default()
    }

    /// Issues a code for `user`, valid from `now_ms`.
    pub fn issue(&self, user: &str, now_ms: u64) -> Result<PairCode, ControlError> {
        // 10 digits from the same entropy as tokens: a guess succeeds once in 10^10, and a
        // code lives ten minutes and works once.
        let random = crate::store::generate_token()?;
        let n = u64::from_str_radix(&random[..15], 16).unwrap_or(0) % 10_000_000_000;
        let digits = format!("{n:010}");
        let code = format!("{}-{}", &digits[..5], &digits[5..]);
        let expires_ms = now_ms + PAIR_CODE_TTL_MS;
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, (_, expires)| *expires > now_ms);
        let mut own: Vec<(String, u64)> =
            codes.iter().filter(|(_, (u, _))| u == user).map(|(c, (_, e))| (c.clone(), *e)).collect();
        if own.len() >= MAX_CODES_PER_USER {
            own.sort_by_key(|(_, expires)| *expires);
            for (old, _) in &own[..=own.len() - MAX_CODES_PER_USER] {
                codes.remove(old);
            }
        }
        if codes.len() >= MAX_CODES
            && let Some(oldest) = codes.iter().min_by_key(|(_, (_, e))| *e).map(|(c, _)| c.clone())
        {
            codes.remove(&oldest);
        }
        codes.insert(code.clone(), (user.to_string(), expires_ms));
        Ok(PairCode { code, user: user.to_string(), expires_ms })
    }

    /// Takes a code (it works once): the user it pairs with, if valid at `now_ms`.
    pub fn redeem(&self, code: &str, now_ms: u64) -> Option<String> {
        let code: String = code.chars().filter(|c| c.is_ascii_digit()).collect();
        if code.len() != 10 {
            return None;
        }
        let key = format!("{}-{}", &code[..5], &code[5..]);
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        match codes.remove(&key) {
            Some((user, expires)) if expires > now_ms => Some(user),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_asking_many_codes_drops_only_their_own_oldest() {
        let codes = PairCodes::new();
        let bobs = codes.issue("bob", 1_000).expect("code");
        let first = codes.issue("mallory", 1_000).expect("code");
        let mut last = first.clone();
        for i in 0..50 {
            last = codes.issue("mallory", 1_001 + i).expect("code");
        }
        assert_eq!(codes.redeem(&first.code, 2_000), None, "mallory's oldest went");
        assert_eq!(codes.redeem(&last.code, 2_000), Some("mallory".into()));
        assert_eq!(codes.redeem(&bobs.code, 2_000), Some("bob".into()), "bob's code is untouched");
    }

    #[test]
    fn a_code_works_once_and_only_before_it_expires() {
        let codes = PairCodes::new();
        let c = codes.issue("alice", 1_000).expect("code");
        assert_eq!(c.code.len(), 11);
        assert_eq!(codes.redeem(&c.code.replace('-', " "), 2_000), Some("alice".into()), "spacing is forgiven");
        assert_eq!(codes.redeem(&c.code, 2_000), None, "used up");
        let c = codes.issue("bob", 1_000).expect("code");
        assert_eq!(codes.redeem(&c.code, 1_000 + PAIR_CODE_TTL_MS), None, "expired");
        assert_eq!(codes.redeem("12", 0), None);
        assert_eq!(codes.redeem("not a code at all", 0), None);
    }
}
