//! Engine events as the guest receives them: `vmi_event(kind, a, b, c)` (docs/GUEST_ABI.md).

use vmi_engine::{Event, KeyCode, MAX_SCREEN_SIDE, TouchPhase};

/// Event kind of a fired timer.
pub const TIMER_EVENT: i32 = 5;

/// The `(kind, a, b, c)` a guest of `abi_version` is called with for `event`, or `None`
/// when that version was never promised the event (a display change for a version-1
/// guest: its screen stays as it is and terminals scale it). `mailbox_len` is what a
/// mail-arrived event reports.
pub fn raw_event(event: Event, mailbox_len: usize, abi_version: u32) -> Option<[i32; 4]> {
    Some(match event {
        Event::Touch { phase, x, y, pointer } => {
            let kind = match phase {
                TouchPhase::Down => 1,
                TouchPhase::Move => 2,
                TouchPhase::Up => 3,
            };
            [kind, x, y, i32::from(pointer)]
        }
        Event::Key { code, text } => {
            let code = if code == KeyCode::Text { 0 } else { code as i32 };
            // Events carry the text typed, not the keys held: a capital was typed with
            // shift, so the guest sees shift for it (docs/GUEST_ABI.md).
            let shift = i32::from(text.is_some_and(char::is_uppercase));
            [4, code, text.map(|c| c as i32).unwrap_or(0), shift]
        }
        Event::Timer(id) => [TIMER_EVENT, id as i32, 0, 0],
        Event::MailArrived => [6, mailbox_len.min(i32::MAX as usize) as i32, 0, 0],
        Event::Wake => [7, 0, 0, 0],
        Event::Sleep => [8, 0, 0, 0],
        Event::Display { .. } if abi_version < 2 => return None,
        Event::Display { width, height, density } => {
            let side = |v: u32| v.clamp(1, MAX_SCREEN_SIDE) as i32;
            [9, side(width), side(height), density.min(10_000) as i32]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_the_abi_numbers() {
        let touch = Event::Touch { phase: TouchPhase::Move, x: 3, y: -4, pointer: 1 };
        assert_eq!(raw_event(touch, 0, 2), Some([2, 3, -4, 1]));
        assert_eq!(raw_event(Event::Key { code: KeyCode::Text, text: Some('É') }, 0, 2), Some([4, 0, 0xC9, 1]));
        assert_eq!(raw_event(Event::MailArrived, 3, 1), Some([6, 3, 0, 0]));
        let display = Event::Display { width: 99_999, height: 0, density: 300 };
        assert_eq!(raw_event(display, 0, 1), None, "a version-1 guest never sees a display event");
        assert_eq!(raw_event(display, 0, 2), Some([9, MAX_SCREEN_SIDE as i32, 1, 300]));
    }
}
