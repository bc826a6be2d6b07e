//! The owner's store of its jobs' bytes: each job's unique id, reducer and payload, packed as in
//! [`JobBytes`](crate::message::JobBytes), kept in chunks of equal-sized slots rather than in
//! a heap block each.
//!
//! A heap block costs a job malloc's 8-byte header and the rounding up to 16 bytes: an 81-byte
//! blob (a 64-byte payload and a 17-byte unique id) took 96 bytes, and the `Box<[u8]>` that
//! pointed at it 16 more in the job; a slot takes exactly its length, and a [`Blob`] 8 bytes.
//!
//! A blob of `n` bytes, 1 ≤ `n` ≤ [`SLOTTED_MAX`], takes a slot of `n` bytes (at least 2: a
//! free slot holds the next free one) in a chunk holding only slots of that length: a length's
//! first chunk holds about [`FIRST_CHUNK_BYTES`], each further one twice the one before, up to
//! about [`CHUNK_BYTES`]. The chunks of a length with a free slot are its `open` list, and a
//! new blob goes into the last of them. A chunk left empty is freed unless it is the only open
//! one of its length, so a length in use keeps at most one empty chunk, and a length's memory
//! goes back once its blobs are gone. A longer blob keeps its own heap block, which its size
//! dwarfs.

use slab::Slab;

/// The longest blob kept in a slot.
pub(super) const SLOTTED_MAX: usize = 512;

/// The size of the largest chunks of slots, about (a whole number of slots).
pub(super) const CHUNK_BYTES: usize = 16 * 1024;

/// The size of a length's first chunk, about: a length with few blobs holds little.
pub(super) const FIRST_CHUNK_BYTES: usize = 1024;

/// `Blob::class` of a blob in its own heap block.
const BIG: u16 = u16::MAX;

/// `Blob::class` of an empty blob.
const EMPTY: u16 = u16::MAX - 1;

/// "No slot" in a chunk's free list.
const NO_SLOT: u16 = u16::MAX;

/// "Not on the open list".
const CLOSED: u32 = u32::MAX;

/// Where a job's bytes are in [`Blobs`]. Not `Clone`: each blob is removed once, by value.
#[derive(Debug)]
pub(super) struct Blob {
    /// The chunk (a key in its class's chunks), or for a long blob its key in `Blobs::big`.
    chunk: u32,
    /// The slot in the chunk.
    slot: u16,
    /// Its index in `Blobs::classes`, or [`BIG`] or [`EMPTY`].
    class: u16,
}

struct Chunk {
    /// The slots written so far (freed ones included): the chunk grows as it fills, up to the
    /// capacity reserved for all its slots.
    bytes: Vec<u8>,
    /// The first free slot below `bytes.len()`, or [`NO_SLOT`]; each free slot's first two
    /// bytes hold the next.
    free: u16,
    /// Blobs in it.
    live: u16,
    /// Slots it has room for.
    slots: u16,
    /// Its place in its class's `open` list, or [`CLOSED`] when full.
    open_at: u32,
}

/// The chunks of one blob length.
struct Class {
    len: usize,
    /// Its slot size: [`slot_size`] of `len`.
    size: usize,
    chunks: Slab<Chunk>,
    /// Chunks with a free slot; new blobs go into the last.
    open: Vec<u32>,
}

/// Slot size for a blob of `len` bytes.
fn slot_size(len: usize) -> usize {
    len.max(2)
}

/// The jobs' bytes; see the module documentation.
#[derive(Default)]
pub(super) struct Blobs {
    /// The class of each blob length up to the longest stored so far, as 1 + its index in
    /// `classes`, or 0 for a length never stored.
    class_of: Vec<u16>,
    /// The lengths stored so far (at most [`SLOTTED_MAX`]), in the order they came.
    classes: Vec<Class>,
    /// Blobs longer than [`SLOTTED_MAX`].
    big: Slab<Box<[u8]>>,
}

impl Blobs {
    /// Stores `bytes`: copied into a slot, or kept as they are if long.
    pub(super) fn insert(&mut self, bytes: Box<[u8]>) -> Blob {
        let len = bytes.len();
        if len == 0 {
            return Blob {
                chunk: 0,
                slot: 0,
                class: EMPTY,
            };
        }
        if len > SLOTTED_MAX {
            return Blob {
                chunk: self.big.insert(bytes) as u32,
                slot: 0,
                class: BIG,
            };
        }
        let c = match self.class_of.get(len) {
            Some(&c) if c > 0 => c - 1,
            _ => self.new_class(len),
        };
        let class = &mut self.classes[c as usize];
        let size = class.size;
        let id = match class.open.last() {
            Some(&id) => id,
            None => {
                let bytes = (FIRST_CHUNK_BYTES << class.chunks.len().min(8)).min(CHUNK_BYTES);
                let slots = (bytes / size).max(1);
                let id = class.chunks.insert(Chunk {
                    bytes: Vec::with_capacity(slots * size),
                    free: NO_SLOT,
                    live: 0,
                    slots: slots as u16,
                    open_at: 0,
                }) as u32;
                class.open.push(id);
                id
            }
        };
        let chunk = &mut class.chunks[id as usize];
        let slot = match chunk.free {
            NO_SLOT => {
                let slot = chunk.bytes.len() / size;
                chunk.bytes.extend_from_slice(&bytes);
                chunk.bytes.resize((slot + 1) * size, 0);
                slot
            }
            free => {
                let slot = free as usize;
                let at = slot * size;
                chunk.free = u16::from_le_bytes([chunk.bytes[at], chunk.bytes[at + 1]]);
                chunk.bytes[at..at + len].copy_from_slice(&bytes);
                slot
            }
        };
        chunk.live += 1;
        if chunk.live == chunk.slots {
            // Full: it is the last open chunk, the one just used.
            chunk.open_at = CLOSED;
            class.open.pop();
        }
        Blob {
            chunk: id,
            slot: slot as u16,
            class: c,
        }
    }

    /// The class for blobs of `len` bytes, a length not stored before.
    #[cold]
    fn new_class(&mut self, len: usize) -> u16 {
        if self.class_of.len() <= len {
            self.class_of.resize(len + 1, 0);
        }
        self.classes.push(Class {
            len,
            size: slot_size(len),
            chunks: Slab::new(),
            open: Vec::new(),
        });
        self.class_of[len] = self.classes.len() as u16;
        self.classes.len() as u16 - 1
    }

    /// The bytes of `blob`.
    #[inline]
    pub(super) fn get(&self, blob: &Blob) -> &[u8] {
        match blob.class {
            EMPTY => &[],
            BIG => &self.big[blob.chunk as usize],
            c => {
                let class = &self.classes[c as usize];
                let at = blob.slot as usize * class.size;
                &class.chunks[blob.chunk as usize].bytes[at..at + class.len]
            }
        }
    }

    /// Frees `blob`'s slot (or heap block).
    pub(super) fn remove(&mut self, blob: Blob) {
        let class = match blob.class {
            EMPTY => return,
            BIG => {
                self.big.remove(blob.chunk as usize);
                return;
            }
            c => &mut self.classes[c as usize],
        };
        let id = blob.chunk as usize;
        let chunk = &mut class.chunks[id];
        chunk.live -= 1;
        if chunk.open_at == CLOSED {
            chunk.open_at = class.open.len() as u32;
            class.open.push(blob.chunk);
        }
        if chunk.live == 0 {
            if class.open.len() > 1 {
                // Another chunk of this length has room: this one goes.
                let at = chunk.open_at as usize;
                class.open.swap_remove(at);
                if let Some(&moved) = class.open.get(at) {
                    class.chunks[moved as usize].open_at = at as u32;
                }
                class.chunks.remove(id);
            } else {
                // The length's one open chunk stays, empty, and fills from the start again.
                chunk.bytes.clear();
                chunk.free = NO_SLOT;
            }
            return;
        }
        let at = blob.slot as usize * class.size;
        chunk.bytes[at..at + 2].copy_from_slice(&chunk.free.to_le_bytes());
        chunk.free = blob.slot;
    }

    /// Chunks held, over all lengths (for tests).
    #[cfg(test)]
    fn chunks(&self) -> usize {
        self.classes.iter().map(|c| c.chunks.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// Random inserts and removals of blobs of many lengths (empty, slotted, long) against a
    /// model: every live blob reads back its own bytes, and chunks go once their blobs do.
    #[test]
    fn blobs_read_back_and_chunks_are_freed() {
        let mut blobs = Blobs::default();
        let mut live: Vec<(Blob, Vec<u8>)> = Vec::new();
        let mut seed: u64 = 0x2545F4914F6CDD1D;
        for round in 0..3 {
            for i in 0..60_000u32 {
                let r = xorshift(&mut seed);
                // Mostly inserts in the first half of a round, mostly removals in the second.
                let insert = (r % 100) < if i < 30_000 { 70 } else { 30 };
                if insert || live.is_empty() {
                    let len = match r >> 8 & 15 {
                        0 => 0,
                        1 => 1,
                        2 => SLOTTED_MAX,
                        3 => SLOTTED_MAX + 1 + (r >> 16) as usize % 3000,
                        _ => 60 + (r >> 16) as usize % 40,
                    };
                    let bytes: Vec<u8> = (0..len).map(|j| (j as u64 ^ r) as u8).collect();
                    let blob = blobs.insert(bytes.clone().into());
                    live.push((blob, bytes));
                } else {
                    let (blob, bytes) = live.swap_remove((r >> 16) as usize % live.len());
                    assert_eq!(blobs.get(&blob), &bytes[..]);
                    blobs.remove(blob);
                }
            }
            for (blob, bytes) in &live {
                assert_eq!(blobs.get(blob), &bytes[..], "round {round}");
            }
        }
        for (blob, _) in live.drain(..) {
            blobs.remove(blob);
        }
        // At most one (empty) chunk per length used.
        assert!(blobs.chunks() <= 2 + 40 + 1, "{}", blobs.chunks());
        assert!(blobs.big.is_empty());
    }

    /// A length's chunks fill in turn, growing to the largest size, and a blob takes a slot
    /// of exactly its length.
    #[test]
    fn slots_are_exact() {
        let mut blobs = Blobs::default();
        let n = 100 * (CHUNK_BYTES / 81) + 1;
        let kept: Vec<Blob> = (0..n)
            .map(|i| blobs.insert(vec![i as u8; 81].into()))
            .collect();
        let class = &blobs.classes[0];
        let sizes: Vec<usize> = class.chunks.iter().map(|(_, c)| c.slots as usize).collect();
        assert_eq!(sizes[..6], [12, 25, 50, 101, 202, 202]);
        let used: usize = class.chunks.iter().map(|(_, c)| c.bytes.len()).sum();
        assert_eq!(used, 81 * n);
        for (i, b) in kept.iter().enumerate() {
            assert_eq!(blobs.get(b), &[i as u8; 81][..]);
        }
        for b in kept {
            blobs.remove(b);
        }
        assert_eq!(blobs.chunks(), 1);
    }
}
