//! When an entry expires: an absolute time on the writer's wall clock, in Unix milliseconds.

use std::num::NonZeroU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The instant an entry expires: milliseconds since the Unix epoch on the wall clock
/// ([`SystemTime`]) of the process that wrote it, as stored (SQLite: the column `expires_at`).
///
/// An entry is live while the reading process's wall clock is before its deadline and absent
/// from that millisecond on. The deadline is absolute, so it means the same to every process
/// and survives restarts; a process whose clock is ahead of the writer's sees the entry expire
/// early by as much, one whose clock is behind sees it late.
///
/// `Option<Deadline>` is 8 bytes (the epoch itself is no deadline), as stored beside the value
/// of an entry that has one.
///
/// ```
/// use persistent_map::Deadline;
/// use std::time::{Duration, SystemTime};
///
/// let soon = Deadline::after(Duration::from_secs(60));
/// assert!(!soon.has_passed());
/// assert!(soon.remaining().unwrap() <= Duration::from_secs(60));
///
/// let past = Deadline::at(SystemTime::now() - Duration::from_secs(1));
/// assert!(past.has_passed());
/// assert_eq!(past.remaining(), None);
/// assert_eq!(Deadline::from_unix_millis(past.unix_millis()), Some(past));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(NonZeroU64);

impl Deadline {
    /// `ttl` from now on this process's wall clock, rounded up to the next millisecond, so an
    /// entry lives at least `ttl`. A `ttl` too large to represent saturates (never in practice).
    ///
    /// ```
    /// use persistent_map::Deadline;
    /// use std::time::Duration;
    ///
    /// assert!(Deadline::after(Duration::from_millis(10)) <= Deadline::after(Duration::from_secs(1)));
    /// ```
    pub fn after(ttl: Duration) -> Self {
        Self::at(SystemTime::now() + ttl.min(Duration::from_secs(u64::MAX / 4_000)))
    }

    /// The absolute time `at`, rounded up to the next millisecond; a time before the Unix epoch
    /// is the first millisecond after it (long past).
    ///
    /// ```
    /// use persistent_map::Deadline;
    /// use std::time::{Duration, UNIX_EPOCH};
    ///
    /// let deadline = Deadline::at(UNIX_EPOCH + Duration::from_micros(1_500));
    /// assert_eq!(deadline.unix_millis(), 2);
    /// ```
    pub fn at(at: SystemTime) -> Self {
        let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let millis = since_epoch.as_nanos().div_ceil(1_000_000);
        Self::from_millis_saturating(millis)
    }

    /// The deadline stored as `millis` (Unix milliseconds); `None` for 0, which storage never
    /// holds as a deadline.
    ///
    /// ```
    /// use persistent_map::Deadline;
    ///
    /// assert_eq!(Deadline::from_unix_millis(0), None);
    /// assert_eq!(Deadline::from_unix_millis(1_700_000_000_000).unwrap().unix_millis(), 1_700_000_000_000);
    /// ```
    pub fn from_unix_millis(millis: u64) -> Option<Self> {
        NonZeroU64::new(millis).map(Self)
    }

    /// Milliseconds since the Unix epoch, as stored.
    ///
    /// ```
    /// # use persistent_map::Deadline;
    /// assert_eq!(Deadline::from_unix_millis(42).unwrap().unix_millis(), 42);
    /// ```
    pub fn unix_millis(self) -> u64 {
        self.0.get()
    }

    /// The deadline as a [`SystemTime`].
    ///
    /// ```
    /// # use persistent_map::Deadline;
    /// use std::time::{Duration, UNIX_EPOCH};
    /// let deadline = Deadline::from_unix_millis(1_000).unwrap();
    /// assert_eq!(deadline.to_system_time(), UNIX_EPOCH + Duration::from_secs(1));
    /// ```
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.unix_millis())
    }

    /// Whether this process's wall clock has reached the deadline: an entry with it is absent.
    ///
    /// ```
    /// # use persistent_map::Deadline;
    /// assert!(Deadline::from_unix_millis(1).unwrap().has_passed());
    /// ```
    pub fn has_passed(self) -> bool {
        self.passed_at(now_millis())
    }

    /// The time left before the deadline on this process's wall clock, in whole milliseconds
    /// (rounded down); `None` once it passed.
    ///
    /// ```
    /// # use persistent_map::Deadline;
    /// use std::time::Duration;
    /// let left = Deadline::after(Duration::from_secs(5)).remaining().unwrap();
    /// assert!(left > Duration::from_secs(4) && left <= Duration::from_secs(5));
    /// ```
    pub fn remaining(self) -> Option<Duration> {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let floor = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        if self.passed_at(floor) {
            return None;
        }
        let ceil = u64::try_from(since_epoch.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        Some(Duration::from_millis(
            self.unix_millis().saturating_sub(ceil),
        ))
    }

    /// Whether the deadline has passed at `now` (Unix milliseconds).
    pub(crate) fn passed_at(self, now: u64) -> bool {
        now >= self.0.get()
    }

    fn from_millis_saturating(millis: u128) -> Self {
        let millis = u64::try_from(millis).unwrap_or(u64::MAX).max(1);
        Self(NonZeroU64::new(millis).expect("max(1) is never 0"))
    }
}

/// This process's wall clock in Unix milliseconds (rounded down); 0 before the epoch.
pub(crate) fn now_millis() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Whether an entry with `deadline` is live at `now` (Unix milliseconds).
pub(crate) fn is_live(deadline: Option<Deadline>, now: u64) -> bool {
    deadline.is_none_or(|deadline| !deadline.passed_at(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_until_the_millisecond_of_its_deadline() {
        let deadline = Deadline::from_unix_millis(1_000).unwrap();
        assert!(is_live(Some(deadline), 999));
        assert!(!is_live(Some(deadline), 1_000));
        assert!(is_live(None, u64::MAX));
    }

    #[test]
    fn a_ttl_is_never_cut_short_by_rounding() {
        let before = SystemTime::now();
        let deadline = Deadline::after(Duration::from_micros(1));
        assert!(deadline.to_system_time() > before);
        assert_eq!(
            std::mem::size_of::<Option<Deadline>>(),
            std::mem::size_of::<u64>()
        );
    }
}
