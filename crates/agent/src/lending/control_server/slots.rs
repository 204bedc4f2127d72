//! Who holds the control socket's connection slots, and who gives one up
//! when they run out. Every decision is here, in a type that does no I/O
//! and takes `now` as an argument; the server holds it behind a mutex.
//!
//! Two pools, one per [`Class`] of peer:
//!
//! ```text
//!   builds ──▶ [ build pool: max_connections ]   never lent to the owner
//!   owner  ──▶ [ owner pool: owner_connections ] never lent to builds
//!
//!   pool full?  ── an idle connection in it ──▶ the one idle longest is
//!        │                                     closed; the newcomer is in
//!        └──── every one busy ────────────────▶ the newcomer is refused
//! ```
//!
//! A connection is idle while it waits for a request line and busy while a
//! request is carried out, including an `events` stream and a `borrow` or
//! `return` with `wait`. Closing an idle connection loses nothing: it has
//! no request in progress (a line that arrives as it is closed gets the
//! eviction's error line instead of a reply, and changes nothing).

use std::collections::HashMap;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// Whom a peer is, for the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A process below the engine: a build step running `jnlp-agent ctl`.
    Build,
    /// Anyone else allowed in: the owner's shell, the lender's tooling.
    Owner,
}

/// What [`Slots::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// The newcomer has slot `id`; `evicted` says whether an idle
    /// connection was closed (its token cancelled) to make room.
    Admitted {
        /// The slot, for [`Slots::busy`], [`Slots::idle`] and
        /// [`Slots::release`].
        id: u64,
        /// Whether an idle connection had to go.
        evicted: bool,
    },
    /// The pool is full and every connection in it is busy.
    Full,
}

/// One open connection.
#[derive(Debug)]
struct Entry {
    class: Class,
    /// Since when it waits for a request; `None` while busy.
    idle_since: Option<Instant>,
    /// Cancelled to close it when it is evicted.
    evict: CancellationToken,
}

/// The open connections and the two pools' sizes.
#[derive(Debug)]
pub struct Slots {
    build_capacity: usize,
    owner_capacity: usize,
    open: HashMap<u64, Entry>,
    next_id: u64,
}

impl Slots {
    /// Empty pools of the given sizes.
    pub fn new(build_capacity: usize, owner_capacity: usize) -> Self {
        Self {
            build_capacity,
            owner_capacity,
            open: HashMap::new(),
            next_id: 0,
        }
    }

    fn capacity(&self, class: Class) -> usize {
        match class {
            Class::Build => self.build_capacity,
            Class::Owner => self.owner_capacity,
        }
    }

    /// A slot for a new connection of `class`, idle from `now` on. When its
    /// pool is full, the connection of the same pool idle the longest is
    /// evicted (its `evict` token cancelled, its slot freed).
    pub fn admit(&mut self, class: Class, now: Instant, evict: CancellationToken) -> Admission {
        let held = self.open.values().filter(|e| e.class == class).count();
        let mut evicted = false;
        if held >= self.capacity(class) {
            let oldest_idle = self
                .open
                .iter()
                .filter(|(_, e)| e.class == class)
                .filter_map(|(id, e)| e.idle_since.map(|since| (since, *id)))
                .min();
            let Some((_, victim)) = oldest_idle else {
                return Admission::Full;
            };
            if let Some(entry) = self.open.remove(&victim) {
                entry.evict.cancel();
            }
            evicted = true;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(
            id,
            Entry {
                class,
                idle_since: Some(now),
                evict,
            },
        );
        Admission::Admitted { id, evicted }
    }

    /// Slot `id` is carrying out a request: not to be evicted.
    pub fn busy(&mut self, id: u64) {
        if let Some(entry) = self.open.get_mut(&id) {
            entry.idle_since = None;
        }
    }

    /// Slot `id` waits for its next request from `now` on.
    pub fn idle(&mut self, id: u64, now: Instant) {
        if let Some(entry) = self.open.get_mut(&id) {
            entry.idle_since = Some(now);
        }
    }

    /// Slot `id`'s connection is closed (a no-op once it was evicted).
    pub fn release(&mut self, id: u64) {
        self.open.remove(&id);
    }

    /// Open connections of `class`.
    #[cfg(test)]
    pub fn held(&self, class: Class) -> usize {
        self.open.values().filter(|e| e.class == class).count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Duration;

    fn admitted(admission: Admission) -> (u64, bool) {
        match admission {
            Admission::Admitted { id, evicted } => (id, evicted),
            Admission::Full => panic!("refused"),
        }
    }

    #[test]
    fn builds_never_take_the_owners_slots() {
        let t0 = Instant::now();
        let mut slots = Slots::new(2, 1);
        let builds: Vec<_> = (0..2)
            .map(|_| {
                let token = CancellationToken::new();
                let (id, evicted) = admitted(slots.admit(Class::Build, t0, token.clone()));
                assert!(!evicted);
                slots.busy(id);
                token
            })
            .collect();
        // Both build slots busy: a third build is refused, the owner is in.
        assert_eq!(
            slots.admit(Class::Build, t0, CancellationToken::new()),
            Admission::Full
        );
        let (_, evicted) = admitted(slots.admit(Class::Owner, t0, CancellationToken::new()));
        assert!(!evicted);
        assert!(builds.iter().all(|t| !t.is_cancelled()));
        assert_eq!((slots.held(Class::Build), slots.held(Class::Owner)), (2, 1));
    }

    #[test]
    fn a_full_pool_evicts_its_longest_idle_connection() {
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        let mut slots = Slots::new(3, 1);
        let tokens: Vec<_> = (0..3).map(|_| CancellationToken::new()).collect();
        let ids: Vec<_> = tokens
            .iter()
            .map(|t| admitted(slots.admit(Class::Build, t0, t.clone())).0)
            .collect();
        // 0 is busy (streaming events), 1 went idle again at 5 s, 2 at 3 s.
        slots.busy(ids[0]);
        slots.busy(ids[1]);
        slots.idle(ids[1], later(5));
        slots.busy(ids[2]);
        slots.idle(ids[2], later(3));

        let (_, evicted) = admitted(slots.admit(Class::Build, later(6), CancellationToken::new()));
        assert!(evicted);
        let cancelled: Vec<_> = tokens.iter().map(CancellationToken::is_cancelled).collect();
        assert_eq!(cancelled, [false, false, true]);
        assert_eq!(slots.held(Class::Build), 3);
        // The evicted connection's own release later is harmless.
        slots.release(ids[2]);
        assert_eq!(slots.held(Class::Build), 3);

        // The owner's pool is untouched by all this, and evicts in its turn.
        let owner = CancellationToken::new();
        admitted(slots.admit(Class::Owner, later(6), owner.clone()));
        let (_, evicted) = admitted(slots.admit(Class::Owner, later(7), CancellationToken::new()));
        assert!(evicted && owner.is_cancelled());
        assert!(!tokens[1].is_cancelled());
    }

    #[test]
    fn released_slots_are_reused() {
        let t0 = Instant::now();
        let mut slots = Slots::new(1, 0);
        let (id, _) = admitted(slots.admit(Class::Build, t0, CancellationToken::new()));
        slots.busy(id);
        assert_eq!(
            slots.admit(Class::Build, t0, CancellationToken::new()),
            Admission::Full
        );
        slots.release(id);
        let (_, evicted) = admitted(slots.admit(Class::Build, t0, CancellationToken::new()));
        assert!(!evicted);
        // A pool of size 0 admits nobody.
        assert_eq!(
            slots.admit(Class::Owner, t0, CancellationToken::new()),
            Admission::Full
        );
    }
}
