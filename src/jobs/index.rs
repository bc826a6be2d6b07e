//! The owner's indexes over its jobs: by coalescing key (the unique, or the payload for
//! unique `-`), and by handle number.

use std::collections::VecDeque;

use ahash::AHashMap;
use hashbrown::HashTable;

use super::Key;

/// Jobs by coalescing key. Each entry is the job's slab key and 32 bits of its hash, never a
/// second copy of the unique: 8 bytes a job. Keeping the hash bits means growing the table
/// rehashes from the entries alone; hashing through the jobs would touch every job record
/// (a cache miss each), which stalled submissions for a tenth of a second at a million jobs.
#[derive(Default)]
pub(super) struct Index(HashTable<(u32, u32)>);

/// A 32-bit hash spread over 64 bits, so the table's bucket bits (low) and tag bits (high)
/// both come from the 32 bits an entry keeps.
fn spread(h: u32) -> u64 {
    (h as u64) << 32 | h as u64
}

impl Index {
    pub(super) fn find(&self, hash: u32, eq: impl Fn(usize) -> bool) -> Option<usize> {
        self.0
            .find(spread(hash), |&(k, h)| h == hash && eq(k as usize))
            .map(|&(k, _)| k as usize)
    }

    pub(super) fn insert(&mut self, hash: u32, key: usize) {
        self.0
            .insert_unique(spread(hash), (key as u32, hash), |&(_, h)| spread(h));
    }

    pub(super) fn remove(&mut self, hash: u32, key: usize) {
        if let Ok(e) = self.0.find_entry(spread(hash), |&(k, _)| k as usize == key) {
            e.remove();
        }
    }
}

/// The hashes of coalescing keys, keyed once per owner.
pub(super) struct Hashes(ahash::RandomState);

impl Hashes {
    pub(super) fn new() -> Hashes {
        Hashes(ahash::RandomState::new())
    }

    pub(super) fn key(&self, key: Key<'_>) -> u32 {
        let h = match key {
            Key::None => 0,
            Key::Unique(u) => self.0.hash_one((0u8, u)),
            Key::Data(d) => self.0.hash_one((1u8, d)),
        };
        (h >> 32) as u32 ^ h as u32
    }
}

/// Jobs by handle number. An owner numbers its jobs in sequence and most end in roughly the
/// order they came, so the live ones sit in a window of sequence numbers: a ring of slab keys
/// indexed by sequence (4 bytes a job, no hashing, never rehashed). A job that stays while
/// many later ones come and go (a long-running or far-future job) would stretch the window;
/// once the window is more than twice the live jobs, the oldest entries move to a small map.
#[derive(Default)]
pub(super) struct Numbers {
    /// Sequence of `window[0]`.
    base: u64,
    /// Slab key per sequence, `u32::MAX` once the job ended.
    window: VecDeque<u32>,
    /// Live jobs older than the window.
    old: AHashMap<u64, u32>,
    live: usize,
}

impl Numbers {
    const GONE: u32 = u32::MAX;

    pub(super) fn insert(&mut self, sequence: u64, key: usize) {
        if self.window.is_empty() {
            self.base = sequence;
        }
        debug_assert_eq!(
            self.base + self.window.len() as u64,
            sequence,
            "sequences are dense"
        );
        self.window.push_back(key as u32);
        self.live += 1;
        while self.window.len() > 2 * self.live + 1024 {
            let k = self.window.pop_front().unwrap();
            if k != Self::GONE {
                self.old.insert(self.base, k);
            }
            self.base += 1;
        }
    }

    pub(super) fn get(&self, sequence: u64) -> Option<usize> {
        match sequence.checked_sub(self.base) {
            Some(i) => self
                .window
                .get(i as usize)
                .copied()
                .filter(|&k| k != Self::GONE),
            None => self.old.get(&sequence).copied(),
        }
        .map(|k| k as usize)
    }

    pub(super) fn remove(&mut self, sequence: u64) {
        match sequence.checked_sub(self.base) {
            Some(i) => {
                if let Some(k) = self.window.get_mut(i as usize) {
                    *k = Self::GONE;
                }
                while self.window.front() == Some(&Self::GONE) {
                    self.window.pop_front();
                    self.base += 1;
                }
            }
            None => {
                self.old.remove(&sequence);
            }
        }
        self.live -= 1;
    }
}

#[cfg(test)]
mod numbers_tests {
    use super::Numbers;
    use std::collections::HashMap;

    /// Random inserts and removals against a map model, with a few jobs that live long (the
    /// window must move them aside rather than grow).
    #[test]
    fn numbers_match_a_map_and_stay_bounded() {
        let mut n = Numbers::default();
        let mut model: HashMap<u64, usize> = HashMap::new();
        let mut seed: u64 = 0x2545F4914F6CDD1D;
        for seq in 0..200_000u64 {
            n.insert(seq, seq as usize % 1000);
            model.insert(seq, seq as usize % 1000);
            assert!(n.window.len() <= 2 * n.live + 1024);
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Remove a random recent job, keeping every 50,000th forever.
            let victim = seq.saturating_sub(seed % 64);
            if victim % 50_000 != 0 && model.remove(&victim).is_some() {
                n.remove(victim);
            }
        }
        for (seq, key) in &model {
            assert_eq!(n.get(*seq), Some(*key), "{seq}");
        }
        assert_eq!(n.live, model.len());
        assert_eq!(n.get(199_999 + 10), None);
    }
}
