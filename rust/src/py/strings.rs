//! The string cache of `trackgate.decode`: repeated keys and values made once.

use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

/// Strings made before, found again by their text: a direct-mapped table, each text in one slot
/// (the last one made there), its bytes kept beside the str to compare without asking Python.
#[derive(Debug)]
pub(super) struct StringCache {
    slots: Vec<Option<CachedString>>,
    /// The last event's tuple of `mp_` keys, made of strings from here: the next event whose keys
    /// are the same strings takes it too, in the same payload or the next.
    pub(super) mp_keys: Option<Py<PyTuple>>,
}

#[derive(Debug)]
pub(super) struct CachedString {
    words: Words,
    bytes: [u8; StringCache::MAX_BYTES],
    string: Py<PyString>,
}

impl StringCache {
    const SLOTS: usize = 1024;
    /// Longer texts are made each time: rarely repeated, and slower to compare.
    const MAX_BYTES: usize = 64;

    /// A str of `text`, which is UTF-8.
    pub(super) fn get<'py>(&mut self, py: Python<'py>, text: &[u8]) -> Bound<'py, PyString> {
        let new = |text| PyString::new(py, std::str::from_utf8(text).expect("text is UTF-8"));
        if text.len() > Self::MAX_BYTES {
            return new(text);
        }
        let words = Words::of(text);
        let slot = &mut self.slots[words.hash() as usize % Self::SLOTS];
        if let Some(cached) = slot {
            // Up to 16 bytes, the words are the whole text.
            if cached.words == words && (text.len() <= 16 || cached.bytes[..text.len()] == *text) {
                return cached.string.bind(py).clone();
            }
        }
        let string = new(text);
        let mut bytes = [0; Self::MAX_BYTES];
        bytes[..text.len()].copy_from_slice(text);
        *slot = Some(CachedString {
            words,
            bytes,
            string: string.clone().unbind(),
        });
        string
    }
}

impl Default for StringCache {
    fn default() -> Self {
        Self {
            slots: (0..Self::SLOTS).map(|_| None).collect(),
            mp_keys: None,
        }
    }
}

/// A short text's length and its first and last bytes (`json::ends`): all of a text of up to 16
/// bytes, and a hash of any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Words {
    len: usize,
    head: u64,
    tail: u64,
}

impl Words {
    fn of(text: &[u8]) -> Self {
        let (head, tail) = crate::json::ends(text);
        Self {
            len: text.len(),
            head,
            tail,
        }
    }

    fn hash(self) -> u64 {
        let mixed = (self.head ^ self.tail.rotate_left(32) ^ self.len as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        mixed ^ (mixed >> 32)
    }
}
