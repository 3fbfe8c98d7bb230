//! The string cache of `trackgate.decode`: repeated keys and values made once.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use super::properties::PropertiesTemplate;

/// Strings made before, found again by their text: a direct-mapped table, each text in one slot
/// (the last one made there), its bytes kept beside the str to compare without asking Python.
#[derive(Debug)]
pub(super) struct StringCache {
    /// What a lookup reads: a slot's text's words and its str, in one half of a cache line.
    slots: Vec<Slot>,
    /// The bytes of each slot's text, read only for texts longer than their words.
    bytes: Vec<[u8; StringCache::MAX_BYTES]>,
    /// The last event's tuple of `mp_` keys, made of strings from here: the next event whose keys
    /// are the same strings takes it too, in the same payload or the next.
    pub(super) mp_keys: Option<Py<PyTuple>>,
    /// The last events' properties, whose dict the next with the same keys copies.
    pub(super) properties: PropertiesTemplate,
}

#[derive(Debug, Default)]
#[repr(align(32))]
struct Slot {
    words: Words,
    string: Option<Py<PyString>>,
}

impl StringCache {
    const SLOTS: usize = 1024;
    /// Longer texts are made each time: rarely repeated, and slower to compare.
    const MAX_BYTES: usize = 64;

    /// A str of `text`, which is UTF-8.
    pub(super) fn get<'py>(&mut self, py: Python<'py>, text: &[u8]) -> Bound<'py, PyString> {
        if text.len() > Self::MAX_BYTES {
            return new_string(py, text);
        }
        let words = Words::of(text);
        let index = words.hash() as usize % Self::SLOTS;
        let slot = &mut self.slots[index];
        if let Some(string) = slot.string.as_ref().filter(|_| slot.words == words) {
            // Up to 16 bytes, the words are the whole text.
            if text.len() <= 16 || self.bytes[index][..text.len()] == *text {
                return string.bind(py).clone();
            }
        }
        let string = new_string(py, text);
        slot.words = words;
        let evicted = slot.string.replace(string.clone().unbind());
        // Released bound: a `Py` dropped on its own first asks whether this thread holds the GIL.
        drop(evicted.map(|evicted| evicted.into_bound(py)));
        if text.len() > 16 {
            self.bytes[index][..text.len()].copy_from_slice(text);
        }
        string
    }
}

/// A new str of `text`, which is UTF-8. ASCII text, the usual, is copied into a str made for it:
/// CPython's UTF-8 decoder would read every byte again, after Rust's check that `PyString::new`
/// asks for.
#[allow(unsafe_code)]
pub(super) fn new_string<'py>(py: Python<'py>, text: &[u8]) -> Bound<'py, PyString> {
    let len = ffi::Py_ssize_t::try_from(text.len()).expect("a text fits in memory");
    // SAFETY: the GIL is held (`py`). PyUnicode_New(len, 127) makes a compact ASCII str of `len`
    // one-byte characters, whose data `PyUnicode_DATA` points at, with room for `len` bytes (and the
    // terminating NUL it wrote); the bytes copied are ASCII, as the str's kind says. Other text
    // CPython decodes itself, and it is valid UTF-8: the payload was checked. Both give a new
    // reference, or null with the exception set (memory), on which `from_owned_ptr` panics, as
    // `PyString::new` does.
    unsafe {
        let string = if text.is_ascii() {
            let string = ffi::PyUnicode_New(len, 127);
            if !string.is_null() {
                let data = ffi::PyUnicode_DATA(string).cast::<u8>();
                std::ptr::copy_nonoverlapping(text.as_ptr(), data, text.len());
            }
            string
        } else {
            ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast(), len)
        };
        Bound::from_owned_ptr(py, string).cast_into_unchecked()
    }
}

impl Default for StringCache {
    fn default() -> Self {
        Self {
            slots: (0..Self::SLOTS).map(|_| Slot::default()).collect(),
            bytes: vec![[0; Self::MAX_BYTES]; Self::SLOTS],
            mp_keys: None,
            properties: PropertiesTemplate::default(),
        }
    }
}

/// A short text's length and its first and last bytes (`json::ends`): all of a text of up to 16
/// bytes, and a hash of any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Words {
    len: usize,
    head: u64,
    tail: u64,
}

impl Words {
    pub(super) fn of(text: &[u8]) -> Self {
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
