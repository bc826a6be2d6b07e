//! Intrusive doubly linked FIFO lists threaded through slab entries by key: append, pop and
//! removal from the middle are O(1) and allocate nothing. The links live in the entries
//! (see [`Links`]); a list only keeps its ends and length.

use slab::Slab;

/// "No entry" in a link.
pub const NIL: u32 = u32::MAX;

/// The links an entry carries for the one list it may be on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Links {
    /// Previous entry, or NIL.
    pub prev: u32,
    /// Next entry, or NIL.
    pub next: u32,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            prev: NIL,
            next: NIL,
        }
    }
}

/// Entries that can be on a list.
pub trait Linked {
    /// The entry's links.
    fn links(&mut self) -> &mut Links;
}

/// A FIFO list over a slab.
#[derive(Clone, Copy, Debug)]
pub struct List {
    head: u32,
    tail: u32,
    len: u32,
}

impl Default for List {
    fn default() -> Self {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl List {
    /// The first entry.
    pub fn head(&self) -> Option<usize> {
        (self.head != NIL).then_some(self.head as usize)
    }

    /// Number of entries.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `key`, which must not be on any list.
    pub fn push_back<T: Linked>(&mut self, slab: &mut Slab<T>, key: usize) {
        let k = key as u32;
        *slab[key].links() = Links {
            prev: self.tail,
            next: NIL,
        };
        match self.tail {
            NIL => self.head = k,
            t => slab[t as usize].links().next = k,
        }
        self.tail = k;
        self.len += 1;
    }

    /// Removes `key`, which must be on this list.
    pub fn remove<T: Linked>(&mut self, slab: &mut Slab<T>, key: usize) {
        let Links { prev, next } = *slab[key].links();
        match prev {
            NIL => self.head = next,
            p => slab[p as usize].links().next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => slab[n as usize].links().prev = prev,
        }
        *slab[key].links() = Links::default();
        self.len -= 1;
    }

    /// Removes and returns the first entry.
    pub fn pop_front<T: Linked>(&mut self, slab: &mut Slab<T>) -> Option<usize> {
        let head = self.head()?;
        self.remove(slab, head);
        Some(head)
    }

    /// Iterates the keys front to back.
    pub fn iter<'a, T: Linked>(&self, slab: &'a mut Slab<T>) -> impl Iterator<Item = usize> + 'a {
        let mut at = self.head;
        std::iter::from_fn(move || {
            if at == NIL {
                return None;
            }
            let key = at as usize;
            at = slab[key].links().next;
            Some(key)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    struct E(Links);
    impl Linked for E {
        fn links(&mut self) -> &mut Links {
            &mut self.0
        }
    }

    /// Random operations against a VecDeque model, checking order, length and back-links.
    #[test]
    fn matches_a_model_under_random_operations() {
        let mut slab = Slab::new();
        let mut list = List::default();
        let mut model: VecDeque<usize> = VecDeque::new();
        let mut seed: u64 = 0x9E3779B97F4A7C15;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match seed % 3 {
                0 => {
                    let k = slab.insert(E(Links::default()));
                    list.push_back(&mut slab, k);
                    model.push_back(k);
                }
                1 => {
                    let got = list.pop_front(&mut slab);
                    assert_eq!(got, model.pop_front());
                    if let Some(k) = got {
                        slab.remove(k);
                    }
                }
                _ if !model.is_empty() => {
                    let i = (seed >> 8) as usize % model.len();
                    let k = model.remove(i).unwrap();
                    list.remove(&mut slab, k);
                    slab.remove(k);
                }
                _ => {}
            }
            assert_eq!(list.len() as usize, model.len());
        }
        let keys: Vec<usize> = list.iter(&mut slab).collect();
        assert_eq!(keys, Vec::from(model.clone()));
        let mut back = Vec::new();
        let mut at = list.tail;
        while at != NIL {
            back.push(at as usize);
            at = slab[at as usize].links().prev;
        }
        back.reverse();
        assert_eq!(back, Vec::from(model));
    }
}
