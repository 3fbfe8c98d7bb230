//! An event's properties dict, copied from the last one with the same keys.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

use super::strings::Words;

/// A private dict of the keys the last events had, with the values they had. Events of a batch, and
/// the batches of one client, mostly repeat their keys in the same order, and many of their values:
/// a copy of this dict is a copy of its table, where a new dict hashes and places every key, and then
/// only the values that differ are set, each found at its first probe. The dict is never handed out,
/// so nothing but this changes it.
#[derive(Debug, Default)]
pub(super) struct PropertiesTemplate {
    dict: Option<Py<PyDict>>,
    /// The dict's items, in order.
    items: Vec<Item>,
}

/// An item of the template: an event's keys match when they are the same objects (the string cache
/// gives equal keys as one object), and a value that is the same object need not be set. The texts
/// let an event find the template's strings without the string cache (`key`, `value`).
#[derive(Debug)]
struct Item {
    key: Py<PyAny>,
    value: Py<PyAny>,
    /// None for a text too long to compare, and for a value that is not a str.
    key_text: Option<Text>,
    value_text: Option<Text>,
}

/// The text of a str, to compare without asking Python: its words, and its bytes when longer.
#[derive(Debug)]
struct Text {
    words: Words,
    long: Box<[u8]>,
}

impl Text {
    /// Longer strs are not compared: rarely repeated, and slower to compare.
    const MAX_BYTES: usize = 64;

    fn of(string: &Bound<'_, PyAny>) -> Option<Self> {
        let text = string.cast::<PyString>().ok()?.to_str().ok()?.as_bytes();
        (text.len() <= Self::MAX_BYTES).then(|| Self {
            words: Words::of(text),
            // Up to 16 bytes, the words are the whole text.
            long: if text.len() > 16 {
                text.into()
            } else {
                Box::default()
            },
        })
    }

    fn is(&self, text: &[u8]) -> bool {
        self.words == Words::of(text) && (text.len() <= 16 || *self.long == *text)
    }
}

impl PropertiesTemplate {
    /// The template's key at `index` when its text is `text`: an event with the template's keys
    /// finds each here, beside the last, rather than in the string cache's table.
    pub(super) fn key<'py>(
        &self,
        py: Python<'py>,
        index: usize,
        text: &[u8],
    ) -> Option<Bound<'py, PyAny>> {
        self.find(py, index, text, |item| (&item.key_text, &item.key))
    }

    /// The template's value at `index` when it is a str of `text` (see `key`).
    pub(super) fn value<'py>(
        &self,
        py: Python<'py>,
        index: usize,
        text: &[u8],
    ) -> Option<Bound<'py, PyAny>> {
        self.find(py, index, text, |item| (&item.value_text, &item.value))
    }

    /// The `part` of the item at `index` when its text is `text`.
    fn find<'py>(
        &self,
        py: Python<'py>,
        index: usize,
        text: &[u8],
        part: impl Fn(&Item) -> (&Option<Text>, &Py<PyAny>),
    ) -> Option<Bound<'py, PyAny>> {
        let (known, object) = part(self.items.get(index)?);
        let same = known.as_ref().is_some_and(|known| known.is(text));
        same.then(|| object.bind(py).clone())
    }

    /// The dict of `keys` and `values`, in that order; no key is there twice.
    pub(super) fn dict<'py>(
        &mut self,
        py: Python<'py>,
        keys: &[Bound<'py, PyAny>],
        values: &[Bound<'py, PyAny>],
    ) -> PyResult<Bound<'py, PyDict>> {
        debug_assert_eq!(keys.len(), values.len(), "one value per key");
        if let Some(template) = self.dict.as_ref().filter(|_| self.matches(keys)) {
            let dict = template.bind(py).copy()?;
            for ((key, value), item) in keys.iter().zip(values).zip(&self.items) {
                if !value.is(&item.value) {
                    super::events::set_item(&dict, key, value)?;
                }
            }
            return Ok(dict);
        }
        let dict = super::events::presized_dict(py, keys.len())?;
        for (key, value) in keys.iter().zip(values) {
            super::events::set_item(&dict, key, value)?;
        }
        self.remember(py, keys, values)?;
        Ok(dict)
    }

    fn matches(&self, keys: &[Bound<'_, PyAny>]) -> bool {
        self.items.len() == keys.len() && keys.iter().zip(&self.items).all(|(a, b)| a.is(&b.key))
    }

    /// Makes `keys` and `values` the template, but for values it would keep alive for nothing: an
    /// array or object (made anew for each event), or a str too long to be compared, is None in the
    /// template, which an event's value then replaces. What the template held goes as bound
    /// objects: a `Py` dropped on its own first asks whether this thread holds the GIL.
    fn remember<'py>(
        &mut self,
        py: Python<'py>,
        keys: &[Bound<'py, PyAny>],
        values: &[Bound<'py, PyAny>],
    ) -> PyResult<()> {
        let template = super::events::presized_dict(py, keys.len())?;
        for old in self.items.drain(..) {
            drop((old.key.into_bound(py), old.value.into_bound(py)));
        }
        for (key, value) in keys.iter().zip(values) {
            let value_text = Text::of(value);
            let scalar = value.is_none()
                || value.is_instance_of::<PyBool>()
                || value.is_instance_of::<PyInt>()
                || value.is_instance_of::<PyFloat>();
            let kept = if value_text.is_some() || scalar {
                value.clone()
            } else {
                py.None().into_bound(py)
            };
            super::events::set_item(&template, key, &kept)?;
            self.items.push(Item {
                key: key.clone().unbind(),
                value: kept.unbind(),
                key_text: Text::of(key),
                value_text,
            });
        }
        let old_dict = self.dict.replace(template.unbind());
        drop(old_dict.map(|old| old.into_bound(py)));
        Ok(())
    }
}
