//! What a decoded request hands Python: the request, its rejected events, its partition batches, and
//! the error that refuses a request as a whole.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::{Decoded, EventError, Params, RequestError};

/// A decoded request. Everything is converted on access, and only what the caller asks for.
#[pyclass(module = "trackgate._native", name = "Request", frozen)]
#[derive(Debug)]
pub(super) struct PyRequest(pub(super) Decoded);

#[pymethods]
impl PyRequest {
    #[getter]
    fn verbose(&self) -> bool {
        self.0.params.verbose
    }
    #[getter]
    fn img(&self) -> bool {
        self.0.params.img
    }
    #[getter]
    fn test(&self) -> bool {
        self.0.params.test
    }
    #[getter]
    fn use_ip(&self) -> bool {
        self.0.params.use_ip
    }
    #[getter]
    fn strict(&self) -> bool {
        self.0.params.strict
    }
    #[getter]
    fn callback(&self) -> Option<&str> {
        self.0.params.callback.as_deref()
    }
    #[getter]
    fn redirect(&self) -> Option<&str> {
        self.0.params.redirect.as_deref()
    }
    #[getter]
    fn total(&self) -> usize {
        self.0.total
    }
    #[getter]
    fn accepted(&self) -> usize {
        self.0.accepted()
    }

    #[getter]
    fn errors(&self) -> Vec<PyEventError> {
        self.0.errors.iter().cloned().map(PyEventError).collect()
    }

    #[getter]
    fn batches(&self, py: Python<'_>) -> Vec<PyPartitionBatch> {
        let batches = self.0.batches.batches.iter();
        batches
            .map(|batch| PyPartitionBatch {
                token: PyString::new(py, &batch.token).unbind(),
                partition: batch.partition,
                count: batch.count,
                args: batch.args,
                packed: PyBytes::new(py, &batch.packed).unbind(),
                xadds: PyBytes::new(py, &batch.xadds).unbind(),
            })
            .collect()
    }

    fn events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.0.events().map(|json| PyBytes::new(py, json)))
    }

    fn __repr__(&self) -> String {
        format!(
            "Request(total={}, accepted={}, errors={}, batches={})",
            self.0.total,
            self.0.accepted(),
            self.0.errors.len(),
            self.0.batches.batches.len()
        )
    }
}

/// One rejected event: where it stood in the request, which field (a dotted path, empty when the
/// event itself is at fault), why.
#[pyclass(module = "trackgate._native", name = "EventError", frozen, eq)]
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PyEventError(pub(super) EventError);

#[pymethods]
impl PyEventError {
    #[getter]
    fn index(&self) -> usize {
        self.0.index
    }
    #[getter]
    fn field(&self) -> &str {
        &self.0.field
    }
    #[getter]
    fn kind(&self) -> &'static str {
        self.0.kind.as_str()
    }
    #[getter]
    fn message(&self) -> &str {
        &self.0.message
    }
    #[getter]
    fn insert_id(&self) -> Option<&str> {
        self.0.insert_id.as_deref()
    }

    fn __repr__(&self) -> String {
        let EventError {
            index,
            field,
            kind,
            message,
            ..
        } = &self.0;
        let kind = kind.as_str();
        format!("EventError(index={index}, field={field:?}, kind={kind:?}, message={message:?})")
    }
}

/// The events of one request for one (token, partition), ready for Redis: `count` events whose
/// arguments are `args` RESP bulk strings in `packed`, and whose complete `XADD` commands are `xadds`.
#[pyclass(module = "trackgate._native", name = "PartitionBatch", frozen, get_all)]
#[derive(Debug)]
pub(super) struct PyPartitionBatch {
    token: Py<PyString>,
    partition: u32,
    count: usize,
    args: usize,
    packed: Py<PyBytes>,
    xadds: Py<PyBytes>,
}

#[pymethods]
impl PyPartitionBatch {
    /// For tests and benchmarks that send a batch of their own making.
    #[new]
    #[pyo3(signature = (*, token, partition, count, args, packed, xadds))]
    fn new(
        token: Py<PyString>,
        partition: u32,
        count: usize,
        args: usize,
        packed: Py<PyBytes>,
        xadds: Py<PyBytes>,
    ) -> Self {
        Self {
            token,
            partition,
            count,
            args,
            packed,
            xadds,
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "PartitionBatch(token={:?}, partition={}, count={}, args={}, packed=<{} bytes>, xadds=<{} bytes>)",
            self.token.bind(py).to_string_lossy(),
            self.partition,
            self.count,
            self.args,
            self.packed.bind(py).as_bytes().len(),
            self.xadds.bind(py).as_bytes().len(),
        )
    }
}

/// The payload could not be used: the whole request, or (from `trackgate.decode`) some of its events.
/// `kind` is a stable snake_case name, `status` the HTTP status a gateway answers with.
#[pyclass(module = "trackgate", name = "DecodeError", extends = PyValueError, frozen)]
#[derive(Debug)]
pub(super) struct PyDecodeError {
    #[pyo3(get)]
    kind: String,
    #[pyo3(get)]
    status: u16,
    #[pyo3(get)]
    message: String,
    error_list: Vec<EventError>,
    #[pyo3(get)]
    events: Py<PyList>,
    /// The request's answer-shaping parameters, for a request refused as a whole.
    #[pyo3(get)]
    verbose: bool,
    #[pyo3(get)]
    img: bool,
    #[pyo3(get)]
    strict: bool,
    #[pyo3(get)]
    callback: Option<String>,
}

#[pymethods]
impl PyDecodeError {
    #[new]
    #[pyo3(signature = (kind, message, status = 400, errors = None, events = None))]
    fn new(
        py: Python<'_>,
        kind: String,
        message: String,
        status: u16,
        errors: Option<Vec<Bound<'_, PyEventError>>>,
        events: Option<Vec<Py<PyAny>>>,
    ) -> PyResult<Self> {
        Ok(Self {
            kind,
            status,
            message,
            error_list: errors
                .unwrap_or_default()
                .into_iter()
                .map(|error| error.get().0.clone())
                .collect(),
            events: PyList::new(py, events.unwrap_or_default())?.unbind(),
            verbose: false,
            img: false,
            strict: false,
            callback: None,
        })
    }

    /// One dict per invalid event: `index`, `loc` (index then the field's path), `field`, `kind`, `msg`.
    fn errors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for EventError {
            index,
            field,
            kind,
            message,
            ..
        } in &self.error_list
        {
            let dict = PyDict::new(py);
            dict.set_item("index", index)?;
            let mut loc: Vec<Bound<'py, PyAny>> = vec![index.into_pyobject(py)?.into_any()];
            if !field.is_empty() {
                let (head, rest) = field.split_once('.').unwrap_or((field, ""));
                loc.push(PyString::new(py, head).into_any());
                if !rest.is_empty() {
                    loc.push(PyString::new(py, rest).into_any());
                }
            }
            dict.set_item("loc", PyTuple::new(py, loc)?)?;
            dict.set_item("field", field)?;
            dict.set_item("kind", kind.as_str())?;
            dict.set_item("msg", message)?;
            list.append(dict)?;
        }
        Ok(list)
    }

    fn __str__(&self) -> String {
        self.message.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "DecodeError(kind={:?}, status={}, message={:?})",
            self.kind, self.status, self.message
        )
    }
}

#[cold]
pub(super) fn request_error(py: Python<'_>, error: &RequestError, params: Params) -> PyErr {
    decode_error(py, error, params, Vec::new(), PyList::empty(py))
}

pub(super) fn decode_error(
    py: Python<'_>,
    error: &RequestError,
    params: Params,
    errors: Vec<EventError>,
    events: Bound<'_, PyList>,
) -> PyErr {
    let value = PyDecodeError {
        kind: error.kind().to_owned(),
        status: error.status(),
        message: error.to_string(),
        error_list: errors,
        events: events.unbind(),
        verbose: params.verbose,
        img: params.img,
        strict: params.strict,
        callback: params.callback,
    };
    match Bound::new(py, value) {
        Ok(instance) => PyErr::from_value(instance.into_any()),
        Err(err) => err,
    }
}
