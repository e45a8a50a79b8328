//! The control service's history for the fault checker (`vmi nemesis`): every placement move it makes (an
//! operator's or a site's compare-and-set, a failover) with its invocation and completion times and outcome.
//!
//! One per process, set by the binary at start like a tracing subscriber (`vmi control --history FILE`): the
//! store's callers are many and deep, and a process records to one history or none.

use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};
use vmi_control_api::history::{History, now_us};
use vmi_control_api::model::Placement;

use crate::ControlError;

static HISTORY: OnceLock<Arc<History>> = OnceLock::new();

/// Records this process's placement moves to `history` from now on; false if a history was set already.
pub fn record_to(history: Arc<History>) -> bool {
    HISTORY.set(history).is_ok()
}

/// Runs `call`, a placement move of `user` (`kind`: `move` or `failover`, with `fields`), and records it with its
/// invocation and completion times and what came of it: `ok` with the new placement, `fail` (it did not happen:
/// refused, or lost a compare-and-set) or `unknown` (the store could not say whether it committed).
pub(crate) fn placement_move(
    kind: &str,
    user: &str,
    fields: Value,
    call: impl FnOnce() -> Result<Placement, ControlError>,
) -> Result<Placement, ControlError> {
    let Some(history) = HISTORY.get() else { return call() };
    let invoked_us = now_us();
    let result = call();
    let outcome = match &result {
        Ok(p) => json!({ "type": "ok", "site": p.site, "epoch": p.epoch }),
        Err(ControlError::Unavailable(why)) => json!({ "type": "unknown", "error": why }),
        Err(e) => json!({ "type": "fail", "error": e.to_string() }),
    };
    history.record(
        "placement",
        json!({ "kind": kind, "user": user, "invoked_us": invoked_us, "request": fields,
        "outcome": outcome }),
    );
    result
}
