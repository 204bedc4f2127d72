//! The clock: Unix milliseconds, the unit of every `*_ms` field, and
//! durations in them without overflow.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A duration in whole milliseconds, `u64::MAX` for any longer one (a
/// `Duration` holds up to 2^64 seconds; `as u64` would wrap).
pub fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `start_ms` plus `duration`, in Unix ms, saturating instead of
/// overflowing: a peer's huge duration means "never", not a panic or a time
/// in the past.
pub fn ms_after(start_ms: u64, duration: Duration) -> u64 {
    start_ms.saturating_add(duration_ms(duration))
}

/// The current time as Unix milliseconds, the unit of every `*_ms` field.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// `time` as Unix milliseconds (0 before the epoch).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}
