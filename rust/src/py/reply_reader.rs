//! The batcher's reader of Redis's replies.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyList};

use crate::replies::{self, Item, ReplyBuffer};

pyo3::create_exception!(
    trackgate._native,
    ReplyError,
    pyo3::exceptions::PyException,
    "An error reply from Redis (`-ERR ...`): handed over as a value, never raised."
);

/// The batcher's reader of Redis's replies: `skip` passes over replies in Rust, `gets` builds one.
#[pyclass(module = "trackgate._native", name = "ReplyReader")]
#[derive(Debug, Default)]
pub(super) struct PyReplyReader(pub(super) ReplyBuffer);

#[pymethods]
impl PyReplyReader {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn feed(&mut self, data: &[u8]) {
        self.0.feed(data);
    }

    fn has_data(&self) -> bool {
        self.0.has_data()
    }

    /// Passes over up to `n` whole replies: (how many, the last error reply among them or None).
    fn skip<'py>(
        &mut self,
        py: Python<'py>,
        n: usize,
    ) -> PyResult<(usize, Option<Bound<'py, PyAny>>)> {
        let (passed, error) = self
            .0
            .skip(n)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok((passed, error.map(|text| reply_error(py, &text))))
    }

    /// The next whole reply as Python values, or False until all of it has arrived.
    fn gets<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self
            .0
            .next_reply()
            .map_err(|e| PyValueError::new_err(e.to_string()))?
        {
            None => Ok(PyBool::new(py, false).to_owned().into_any()),
            Some(reply) => build_reply(py, reply, &mut 0),
        }
    }
}

pub(super) fn reply_error<'py>(py: Python<'py>, text: &[u8]) -> Bound<'py, PyAny> {
    ReplyError::new_err(String::from_utf8_lossy(text).into_owned())
        .into_value(py)
        .into_bound(py)
        .into_any()
}

/// The reply starting at `pos` of a whole reply, as hiredis gives it: bytes for status and bulk
/// strings, int, None for nil, list, a ReplyError value for an error.
pub(super) fn build_reply<'py>(
    py: Python<'py>,
    reply: &[u8],
    pos: &mut usize,
) -> PyResult<Bound<'py, PyAny>> {
    let (found, after) = replies::item(reply, *pos).ok().flatten().ok_or_else(|| {
        PyValueError::new_err("the reply reader lost its place in a whole reply (a bug)")
    })?;
    *pos = after;
    Ok(match found {
        Item::Status(text) | Item::Bulk(text) => PyBytes::new(py, text).into_any(),
        Item::Error(text) => reply_error(py, text),
        Item::Integer(n) => n.into_pyobject(py)?.into_any(),
        Item::Nil => py.None().into_bound(py),
        Item::Array(len) => {
            let list = PyList::empty(py);
            for _ in 0..len {
                list.append(build_reply(py, reply, pos)?)?;
            }
            list.into_any()
        }
    })
}
