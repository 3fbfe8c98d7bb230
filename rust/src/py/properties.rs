//! An event's properties dict, copied from the last one with the same keys.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// A private dict of the keys the last events had, with the values they had. Events of a batch, and
/// the batches of one client, mostly repeat their keys in the same order, and many of their values:
/// a copy of this dict is a copy of its table, where a new dict hashes and places every key, and then
/// only the values that differ are set, each found at its first probe. The dict is never handed out,
/// so nothing but this changes it.
#[derive(Debug, Default)]
pub(super) struct PropertiesTemplate {
    dict: Option<Py<PyDict>>,
    /// The dict's keys and values, in order: an event's keys match when they are the same objects
    /// (the string cache gives equal keys as one object), and a value that is the same object need
    /// not be set.
    keys: Vec<Py<PyAny>>,
    values: Vec<Py<PyAny>>,
}

impl PropertiesTemplate {
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
            for ((key, value), old) in keys.iter().zip(values).zip(&self.values) {
                if !value.is(old) {
                    super::events::set_item(&dict, key, value)?;
                }
            }
            return Ok(dict);
        }
        let dict = super::events::presized_dict(py, keys.len())?;
        for (key, value) in keys.iter().zip(values) {
            super::events::set_item(&dict, key, value)?;
        }
        self.remember(py, &dict, keys, values)?;
        Ok(dict)
    }

    fn matches(&self, keys: &[Bound<'_, PyAny>]) -> bool {
        self.keys.len() == keys.len() && keys.iter().zip(&self.keys).all(|(a, b)| a.is(b))
    }

    /// Makes a copy of `dict` the template. What it held goes as bound objects: a `Py` dropped on
    /// its own first asks whether this thread holds the GIL.
    fn remember<'py>(
        &mut self,
        py: Python<'py>,
        dict: &Bound<'py, PyDict>,
        keys: &[Bound<'py, PyAny>],
        values: &[Bound<'py, PyAny>],
    ) -> PyResult<()> {
        let old_dict = self.dict.replace(dict.copy()?.unbind());
        drop(old_dict.map(|old| old.into_bound(py)));
        for (kept, new) in [(&mut self.keys, keys), (&mut self.values, values)] {
            kept.drain(..).for_each(|old| drop(old.into_bound(py)));
            kept.extend(new.iter().map(|object| object.clone().unbind()));
        }
        Ok(())
    }
}
