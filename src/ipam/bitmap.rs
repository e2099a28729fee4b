//! [`AddressSet`]: which offsets of a subnet are taken, without scanning the subnet.
//!
//! The set is sparse and two-level, so it serves a /30 and an IPv6 /64 alike:
//! - offsets are grouped in chunks of 4096 bits (64 words of 64 bits); a chunk is stored only
//!   while it holds at least one taken offset (a /16 that is completely taken costs 16 chunks,
//!   about 8.5 KiB);
//! - each chunk has a summary word whose bit `i` says "word `i` has a free bit", so finding the
//!   first free bit of a chunk is two `trailing_zeros`;
//! - full chunks are kept as merged runs of chunk indices, so a search jumps over any stretch of
//!   full chunks in one lookup.
//!
//! Every operation is O(log n) in the number of stored chunks, with no scan over the subnet.

use std::collections::BTreeMap;

/// Bits per chunk.
const CHUNK_BITS: u128 = 4096;
const WORDS: usize = 64;

/// One 4096-bit chunk with its summary of non-full words.
#[derive(Debug, Clone)]
struct Chunk {
    words: [u64; WORDS],
    /// Bit `i` set: `words[i]` has at least one free (zero) bit.
    nonfull: u64,
    /// Number of set bits.
    count: u16,
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            words: [0; WORDS],
            nonfull: u64::MAX,
            count: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.nonfull == 0
    }

    fn contains(&self, bit: usize) -> bool {
        self.words[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// Sets `bit`; returns false if it was already set.
    fn set(&mut self, bit: usize) -> bool {
        let (w, b) = (bit / 64, bit % 64);
        if self.words[w] & (1 << b) != 0 {
            return false;
        }
        self.words[w] |= 1 << b;
        if self.words[w] == u64::MAX {
            self.nonfull &= !(1 << w);
        }
        self.count += 1;
        true
    }

    /// Clears `bit`; returns false if it was not set.
    fn clear(&mut self, bit: usize) -> bool {
        let (w, b) = (bit / 64, bit % 64);
        if self.words[w] & (1 << b) == 0 {
            return false;
        }
        self.words[w] &= !(1 << b);
        self.nonfull |= 1 << w;
        self.count -= 1;
        true
    }

    /// The first clear bit at or after `from`, if any.
    fn first_clear_from(&self, from: usize) -> Option<usize> {
        let (w, b) = (from / 64, from % 64);
        if w >= WORDS {
            return None;
        }
        let here = !self.words[w] & (u64::MAX << b);
        if here != 0 {
            return Some(w * 64 + here.trailing_zeros() as usize);
        }
        let later = if w + 1 >= WORDS {
            0
        } else {
            self.nonfull & (u64::MAX << (w + 1))
        };
        if later == 0 {
            return None;
        }
        let w = later.trailing_zeros() as usize;
        Some(w * 64 + (!self.words[w]).trailing_zeros() as usize)
    }
}

/// A set of offsets in `0..=u128::MAX`, with a fast "first free offset in a window" search.
///
/// ```
/// use wharf::ipam::bitmap::AddressSet;
/// let mut set = AddressSet::new();
/// assert!(set.insert(0));
/// assert!(set.insert(1));
/// assert_eq!(set.first_free(0, 255), Some(2));
/// set.remove(0);
/// assert_eq!(set.first_free(0, 255), Some(0));
/// assert_eq!(set.len(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct AddressSet {
    /// Chunk index -> chunk, only for chunks with a set bit.
    chunks: BTreeMap<u128, Box<Chunk>>,
    /// Runs of full chunks: first chunk index -> last chunk index (inclusive), disjoint, merged.
    full_runs: BTreeMap<u128, u128>,
    len: u128,
}

fn split(offset: u128) -> (u128, usize) {
    // The remainder is below 4096, so the cast is lossless.
    (offset / CHUNK_BITS, (offset % CHUNK_BITS) as usize)
}

impl AddressSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of offsets in the set.
    pub fn len(&self) -> u128 {
        self.len
    }

    /// True if no offset is in the set.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if `offset` is in the set.
    pub fn contains(&self, offset: u128) -> bool {
        let (c, bit) = split(offset);
        self.chunks.get(&c).is_some_and(|chunk| chunk.contains(bit))
    }

    /// Adds `offset`; returns false if it was already there.
    pub fn insert(&mut self, offset: u128) -> bool {
        let (c, bit) = split(offset);
        let chunk = self
            .chunks
            .entry(c)
            .or_insert_with(|| Box::new(Chunk::new()));
        if !chunk.set(bit) {
            return false;
        }
        let full = chunk.is_full();
        self.len += 1;
        if full {
            self.mark_full(c);
        }
        true
    }

    /// Removes `offset`; returns false if it was not there.
    pub fn remove(&mut self, offset: u128) -> bool {
        let (c, bit) = split(offset);
        let Some(chunk) = self.chunks.get_mut(&c) else {
            return false;
        };
        let was_full = chunk.is_full();
        if !chunk.clear(bit) {
            return false;
        }
        if chunk.count == 0 {
            self.chunks.remove(&c);
        }
        self.len -= 1;
        if was_full {
            self.unmark_full(c);
        }
        true
    }

    /// The lowest offset in `lo..=hi` that is not in the set.
    pub fn first_free(&self, lo: u128, hi: u128) -> Option<u128> {
        let mut at = lo;
        // Each turn either returns or moves to a later chunk that is not full; the one after it
        // is checked in the next turn, so this loops at most three times.
        while at <= hi {
            let (mut c, mut bit) = split(at);
            let covering = self
                .full_runs
                .range(..=c)
                .next_back()
                .filter(|&(&start, &end)| start <= c && c <= end);
            if let Some((_, &end)) = covering {
                c = end.checked_add(1)?;
                bit = 0;
            }
            let found = match self.chunks.get(&c) {
                None => Some(bit),
                Some(chunk) => chunk.first_clear_from(bit),
            };
            let base = c.checked_mul(CHUNK_BITS)?;
            match found {
                Some(b) => {
                    let offset = base + b as u128;
                    return (offset <= hi).then_some(offset);
                }
                None => at = base.checked_add(CHUNK_BITS)?,
            }
        }
        None
    }

    /// The first free offset in `lo..=hi` at or after `from`, wrapping to `lo` (for serial
    /// allocation: "next after the last one handed out").
    pub fn next_free(&self, from: u128, lo: u128, hi: u128) -> Option<u128> {
        let from = from.clamp(lo, hi);
        self.first_free(from, hi).or_else(|| {
            if from > lo {
                self.first_free(lo, from - 1)
            } else {
                None
            }
        })
    }

    fn mark_full(&mut self, c: u128) {
        let mut start = c;
        let mut end = c;
        if let Some(prev_end) = c.checked_sub(1).and_then(|p| {
            self.full_runs
                .range(..=p)
                .next_back()
                .filter(|&(_, &e)| e == p)
                .map(|(&s, _)| s)
        }) {
            self.full_runs.remove(&prev_end);
            start = prev_end;
        }
        // (No let-chain: the crate's rust-version is 1.85.)
        if let Some(next_end) = c
            .checked_add(1)
            .and_then(|next| self.full_runs.remove(&next))
        {
            end = next_end;
        }
        self.full_runs.insert(start, end);
    }

    fn unmark_full(&mut self, c: u128) {
        let Some((&start, &end)) = self.full_runs.range(..=c).next_back() else {
            return;
        };
        if c > end {
            return;
        }
        self.full_runs.remove(&start);
        if start < c {
            self.full_runs.insert(start, c - 1);
        }
        if c < end {
            self.full_runs.insert(c + 1, end);
        }
    }

    /// Approximate heap bytes held (chunks plus map nodes), for capacity planning.
    pub fn heap_bytes(&self) -> usize {
        let chunk = std::mem::size_of::<Chunk>() + std::mem::size_of::<(u128, usize)>();
        self.chunks.len() * chunk + self.full_runs.len() * std::mem::size_of::<(u128, u128)>()
    }

    /// Iterates the offsets in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        self.chunks.iter().flat_map(|(&c, chunk)| {
            chunk.words.iter().enumerate().flat_map(move |(w, &word)| {
                let mut word = word;
                std::iter::from_fn(move || {
                    if word == 0 {
                        return None;
                    }
                    let b = word.trailing_zeros();
                    word &= word - 1;
                    Some(c * CHUNK_BITS + (w as u128) * 64 + u128::from(b))
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn fills_a_slash_16_in_order_then_reports_full() {
        let mut set = AddressSet::new();
        for i in 0..65536u128 {
            assert_eq!(set.first_free(0, 65535), Some(i));
            assert!(set.insert(i));
        }
        assert_eq!(set.first_free(0, 65535), None);
        assert_eq!(set.full_runs.len(), 1);
        assert!(set.remove(40000));
        assert_eq!(set.first_free(0, 65535), Some(40000));
        assert_eq!(set.full_runs.len(), 2);
        assert!(set.insert(40000));
        assert_eq!(set.full_runs.len(), 1);
    }

    #[test]
    fn window_bounds_are_respected() {
        let mut set = AddressSet::new();
        for i in 100..=200 {
            set.insert(i);
        }
        assert_eq!(set.first_free(100, 200), None);
        assert_eq!(set.first_free(100, 201), Some(201));
        assert_eq!(set.first_free(150, 300), Some(201));
        assert_eq!(set.next_free(150, 0, 300), Some(201));
        assert_eq!(set.next_free(250, 100, 260), Some(250));
        for i in 201..=260 {
            set.insert(i);
        }
        assert_eq!(set.next_free(250, 100, 260), None);
        assert_eq!(set.next_free(250, 99, 260), Some(99));
    }

    #[test]
    fn huge_offsets_work() {
        let mut set = AddressSet::new();
        let top = u128::MAX;
        assert!(set.insert(top));
        assert!(set.contains(top));
        assert_eq!(set.first_free(top - 1, top), Some(top - 1));
        set.insert(top - 1);
        assert_eq!(set.first_free(top - 1, top), None);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![top - 1, top]);
    }

    #[test]
    fn matches_a_btreeset_model() {
        // A small deterministic pseudo-random walk (the property tests cover more).
        let mut set = AddressSet::new();
        let mut model = BTreeSet::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = u128::from(x % 20_000);
            if x % 3 == 0 {
                assert_eq!(set.remove(off), model.remove(&off));
            } else {
                assert_eq!(set.insert(off), model.insert(off));
            }
            let lo = u128::from((x >> 20) % 20_000);
            let hi = lo + u128::from((x >> 40) % 9000);
            let want = (lo..=hi).find(|o| !model.contains(o));
            assert_eq!(set.first_free(lo, hi), want);
        }
        assert_eq!(set.len(), model.len() as u128);
        assert!(set.iter().eq(model.iter().copied()));
    }
}
