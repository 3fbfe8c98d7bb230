//! The Python binding, `trackgate._native`: the only file that knows about Python. On the gateway's path
//! results stay in Rust until asked for: no Python object is made per property, and none per event.
//! `trackgate.decode` makes its typed events here, straight from the decoder's.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Mutex;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::event::{IpValue, Normalised, Sink, Value};
use crate::json::{Scalar, StrToken};
use crate::replies::{self, Item, ReplyBuffer};
use crate::{
    request, Context, Decoded, EventError, EventErrorKind, Params, RequestError, RequestErrorKind,
};

/// Requests larger than this are decoded with the GIL released, so other threads run meanwhile.
const DETACH_FROM_BYTES: usize = 64 * 1024;

#[pyclass(module = "trackgate._native", name = "Options", frozen)]
#[derive(Debug, Clone)]
struct PyOptions(crate::Options);

/// The Python side of the rules (see `options.rs`): a keyword-only constructor with each rule's
/// default, each argument checked against the rule's bounds, a getter per rule, and `RULES`.
macro_rules! python_options {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $type:ty = $default:tt, $min:literal..=$max:expr, $help:literal;
    )*) => {
        /// One function per rule, for `from_py_with`: the argument's type and bounds, checked.
        mod rule_argument {
            use super::{Bound, PyAny, PyResult, RuleValue};
            $(
                pub(super) fn $name(value: &Bound<'_, PyAny>) -> PyResult<$type> {
                    <$type as RuleValue>::extract(stringify!($name), value, $min, $max)
                }
            )*
        }

        #[pymethods]
        impl PyOptions {
            #[new]
            #[pyo3(signature = (*, $($name = $default),*))]
            #[allow(clippy::too_many_arguments)]
            fn new($(#[pyo3(from_py_with = rule_argument::$name)] $name: $type),*) -> Self {
                Self(crate::Options { $($name),* })
            }

            $(
                #[getter]
                fn $name(&self) -> $type {
                    self.0.$name
                }
            )*

            fn __repr__(&self) -> String {
                format!("{:?}", self.0)
                    .replacen("Options {", "Options(", 1)
                    .replace(" }", ")")
            }
        }

        /// The rules, for the gateway's settings: name, help text, default and bounds of each.
        fn rules(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
            PyTuple::new(py, [$(
                PyRule {
                    name: stringify!($name),
                    help: $help,
                    default: <$type as RuleValue>::to_python($default, py)?,
                    minimum: <$type as RuleValue>::to_python($min, py)?,
                    maximum: <$type as RuleValue>::bound_to_python($max, py)?,
                },
            )*])
        }
    };
}

with_rules!(python_options);

/// A rule's value: read from Python with its bounds checked, and handed back.
trait RuleValue: Copy + PartialEq + for<'py> IntoPyObject<'py> {
    /// The type's largest value: a maximum that bounds nothing.
    const UNBOUNDED: Self;

    fn extract(name: &str, value: &Bound<'_, PyAny>, min: Self, max: Self) -> PyResult<Self>;

    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.into_py_any(py)
    }

    /// None for a maximum that bounds nothing.
    fn bound_to_python(self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        (self != Self::UNBOUNDED)
            .then(|| self.to_python(py))
            .transpose()
    }
}

impl RuleValue for f64 {
    const UNBOUNDED: Self = f64::INFINITY;

    fn extract(name: &str, value: &Bound<'_, PyAny>, min: Self, max: Self) -> PyResult<Self> {
        let value: f64 = value.extract()?;
        if value.is_finite() && (min..=max).contains(&value) {
            return Ok(value);
        }
        let bounds = if max == Self::UNBOUNDED {
            format!(">= {min}")
        } else {
            format!("from {min} to {max}")
        };
        Err(PyValueError::new_err(format!(
            "{name} must be a finite number {bounds}, got {value}"
        )))
    }
}

impl RuleValue for usize {
    const UNBOUNDED: Self = usize::MAX;

    fn extract(name: &str, value: &Bound<'_, PyAny>, min: Self, max: Self) -> PyResult<Self> {
        limit(name, value, min, max)
    }
}

impl RuleValue for u32 {
    const UNBOUNDED: Self = u32::MAX;

    fn extract(name: &str, value: &Bound<'_, PyAny>, min: Self, max: Self) -> PyResult<Self> {
        let n = limit(name, value, min as usize, max as usize)?;
        Ok(u32::try_from(n).expect("within a u32's bounds"))
    }
}

/// One decoding rule, as `trackgate.settings` builds a setting from it.
#[pyclass(module = "trackgate._native", name = "Rule", frozen, get_all)]
#[derive(Debug)]
struct PyRule {
    name: &'static str,
    help: &'static str,
    default: Py<PyAny>,
    minimum: Py<PyAny>,
    maximum: Option<Py<PyAny>>,
}

#[pymethods]
impl PyRule {
    fn __repr__(&self, py: Python<'_>) -> String {
        let shown = |value: &Py<PyAny>| {
            value
                .bind(py)
                .repr()
                .map_or_else(|_| "?".to_owned(), |r| r.to_string())
        };
        format!(
            "Rule(name={:?}, default={}, minimum={}, maximum={})",
            self.name,
            shown(&self.default),
            shown(&self.minimum),
            self.maximum
                .as_ref()
                .map_or_else(|| "None".to_owned(), shown)
        )
    }
}

/// An integer option from `min` to `max`; a wrong value is a ValueError that names the option, whatever
/// its size or sign (the derived conversion says only "can't convert negative int to unsigned").
fn limit(name: &str, value: &Bound<'_, PyAny>, min: usize, max: usize) -> PyResult<usize> {
    if !value.is_instance_of::<PyInt>() || value.is_instance_of::<PyBool>() {
        return Err(not_an_int(name, value));
    }
    match value.extract::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(out_of_range(name, value, min, max)),
    }
}

#[cold]
fn not_an_int(name: &str, value: &Bound<'_, PyAny>) -> PyErr {
    let type_name = type_name(value.as_borrowed());
    PyTypeError::new_err(format!("{name} must be an int, not {type_name}"))
}

#[cold]
fn out_of_range(name: &str, value: &Bound<'_, PyAny>, min: usize, max: usize) -> PyErr {
    let shown = value
        .str()
        .map_or_else(|_| "?".to_owned(), |s| s.to_string());
    let message = if max != usize::MAX {
        format!("{name} must be from {min} to {max}, got {shown}")
    } else if value.lt(min).unwrap_or(true) {
        format!("{name} must be at least {min}, got {shown}")
    } else {
        format!("{name} must be at most {max}, got {shown}")
    };
    PyValueError::new_err(message)
}

#[pyclass(module = "trackgate._native", name = "TokenSet", frozen)]
#[derive(Debug)]
struct PyTokenSet(HashSet<String>);

#[pymethods]
impl PyTokenSet {
    #[new]
    fn new(tokens: &Bound<'_, PyAny>) -> PyResult<Self> {
        // A str is iterable too: taken as tokens, it would be a set of single characters.
        if tokens.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "tokens must be an iterable of str, not one str",
            ));
        }
        let mut set = HashSet::new();
        for token in tokens.try_iter()? {
            let token = token?;
            let Ok(text) = token.cast::<PyString>() else {
                return Err(not_a_token(&token));
            };
            set.insert(text.to_str()?.to_owned());
        }
        Ok(Self(set))
    }

    /// Like a set's: whatever is not a str is not in it.
    fn __contains__(&self, token: &Bound<'_, PyAny>) -> bool {
        token
            .cast::<PyString>()
            .ok()
            .and_then(|text| text.to_str().ok().map(|t| self.0.contains(t)))
            .unwrap_or(false)
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }
}

#[cold]
fn not_a_token(token: &Bound<'_, PyAny>) -> PyErr {
    let type_name = type_name(token.as_borrowed());
    PyTypeError::new_err(format!("tokens must be str, not {type_name}"))
}

/// A decoded request. Everything is converted on access, and only what the caller asks for.
#[pyclass(module = "trackgate._native", name = "Request", frozen)]
#[derive(Debug)]
struct PyRequest(Decoded);

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
struct PyEventError(EventError);

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

    fn __repr__(&self) -> String {
        let EventError {
            index,
            field,
            kind,
            message,
        } = &self.0;
        let kind = kind.as_str();
        format!("EventError(index={index}, field={field:?}, kind={kind:?}, message={message:?})")
    }
}

/// The events of one request for one (token, partition), ready for Redis: `count` events whose
/// arguments are `args` RESP bulk strings in `packed`, and whose complete `XADD` commands are `xadds`.
#[pyclass(module = "trackgate._native", name = "PartitionBatch", frozen, get_all)]
#[derive(Debug)]
struct PyPartitionBatch {
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
struct PyDecodeError {
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
fn request_error(py: Python<'_>, error: &RequestError, params: Params) -> PyErr {
    decode_error(py, error, params, Vec::new(), PyList::empty(py))
}

fn decode_error(
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
        callback: params.callback,
    };
    match Bound::new(py, value) {
        Ok(instance) => PyErr::from_value(instance.into_any()),
        Err(err) => err,
    }
}

/// `str` or `bytes`, as the caller has it.
enum Text<'py> {
    Bytes(Bound<'py, PyBytes>),
    Str(Bound<'py, PyString>),
}

// By hand, not derived: the derived extraction formats an error message for every variant it tries and
// misses, a cost that every GET (whose query is a `str`) would pay.
impl<'a, 'py> FromPyObject<'a, 'py> for Text<'py> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(text) = obj.cast::<PyString>() {
            return Ok(Text::Str(text.to_owned()));
        }
        if let Ok(bytes) = obj.cast::<PyBytes>() {
            return Ok(Text::Bytes(bytes.to_owned()));
        }
        Err(not_text(obj))
    }
}

#[cold]
fn not_text(obj: Borrowed<'_, '_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!("expected str or bytes, not {}", type_name(obj)))
}

/// For messages: the name of an object's type.
fn type_name(obj: Borrowed<'_, '_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

fn with_bytes<R>(text: Text<'_>, f: impl FnOnce(&[u8]) -> PyResult<R>) -> PyResult<R> {
    match text {
        Text::Bytes(bytes) => f(bytes.as_bytes()),
        Text::Str(s) => {
            if let Ok(text) = s.to_str() {
                return f(text.as_bytes());
            }
            // A str holding surrogates has no UTF-8 form. Encoded with "surrogatepass" they become the
            // 3-byte sequences that mixpanel-browser sends (CESU-8), and decode as those do: a pair as
            // its character, a lone one as U+FFFD (see payload.rs).
            let bytes = s.call_method1("encode", ("utf-8", "surrogatepass"))?;
            f(bytes.cast_into::<PyBytes>()?.as_bytes())
        }
    }
}

/// Runs a decode, without the GIL for large inputs; a refusal carries the parameters `params` reads.
fn run(
    py: Python<'_>,
    size: usize,
    decode: impl FnOnce() -> Result<Decoded, RequestError> + Send,
    params: impl FnOnce() -> Params,
) -> PyResult<PyRequest> {
    let result = if size >= DETACH_FROM_BYTES {
        py.detach(decode)
    } else {
        decode()
    };
    result
        .map(PyRequest)
        .map_err(|e| request_error(py, &e, params()))
}

/// Decodes one /track request: the raw query string and body, and the two headers that shape them.
#[pyfunction]
#[pyo3(signature = (query, body, content_type = None, content_encoding = None, *, now, options, peer_ip = None, tokens = None))]
#[allow(clippy::too_many_arguments)]
fn decode_request(
    py: Python<'_>,
    query: Text<'_>,
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    now: f64,
    options: &PyOptions,
    peer_ip: Option<&str>,
    tokens: Option<&PyTokenSet>,
) -> PyResult<PyRequest> {
    check_now(now)?;
    let rules = &options.0;
    let ctx = Context {
        options: rules,
        now,
        peer_ip,
        tokens: tokens.map(|t| &t.0),
    };
    with_bytes(query, |query| {
        run(
            py,
            query.len() + body.len(),
            || crate::decode_request(query, body, content_type, content_encoding, &ctx),
            || {
                let max = rules.max_request_bytes;
                request::answer_params(query, body, content_type, content_encoding, max)
            },
        )
    })
}

/// Decodes the value of one `data` parameter: base64 in any variant, raw JSON, or gzip bytes.
#[pyfunction]
#[pyo3(signature = (data, *, now, options))]
fn decode_data(
    py: Python<'_>,
    data: Text<'_>,
    now: f64,
    options: &PyOptions,
) -> PyResult<PyRequest> {
    check_now(now)?;
    let rules = &options.0;
    let ctx = Context {
        options: rules,
        now,
        peer_ip: None,
        tokens: None,
    };
    with_bytes(data, |data| {
        run(
            py,
            data.len(),
            || crate::decode_data(data, &ctx),
            Params::default,
        )
    })
}

fn check_now(now: f64) -> PyResult<()> {
    if now.is_finite() && now >= 0.0 {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "now must be a finite number of seconds since 1970, got {now}"
        )))
    }
}

/// Makes the typed events of `trackgate.decode` (msgspec Structs, defined in Python and handed over
/// once) straight from the decoder's events: no JSON is written for Python to read again, and no
/// Python code runs per event.
#[pyclass(module = "trackgate._native", name = "EventDecoder", frozen)]
#[derive(Debug)]
struct PyEventDecoder {
    event_type: Py<PyAny>,
    funnel_type: Py<PyAny>,
    /// The names of the Event's fields, in the order `EventBuilder::event` passes them.
    event_fields: Py<PyTuple>,
    /// The options of a call that gives none.
    default_options: Py<PyOptions>,
    /// Strings made before, for the keys and short values that events of a batch, and batches,
    /// repeat: making one costs more than finding it.
    strings: Mutex<StringCache>,
}

#[pymethods]
impl PyEventDecoder {
    #[new]
    fn new(py: Python<'_>, event: Py<PyAny>, funnel: Py<PyAny>) -> PyResult<Self> {
        // Interned, as the class's own field names are: its constructor matches them by identity.
        let names = EVENT_FIELDS.map(|name| PyString::intern(py, name));
        Ok(Self {
            event_type: event,
            funnel_type: funnel,
            event_fields: PyTuple::new(py, names)?.unbind(),
            default_options: Py::new(py, PyOptions(crate::Options::default()))?,
            strings: Mutex::new(StringCache::default()),
        })
    }

    /// The events of a `data` value (see `trackgate.decode`), `now` by default the clock's, `options`
    /// the default ones. Raises DecodeError when the payload is unusable, and with kind
    /// `invalid_events` (the valid events in `.events`) when any event is invalid.
    #[pyo3(signature = (data, *, now = None, options = None))]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        data: Text<'_>,
        now: Option<f64>,
        options: Option<Bound<'py, PyOptions>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let options = match options {
            Some(options) => options,
            None => self.default_options.bind(py).clone(),
        };
        let options = options.get();
        let now = match now {
            Some(now) => now,
            None => py.import("time")?.getattr("time")?.call0()?.extract()?,
        };
        check_now(now)?;
        let ctx = Context {
            options: &options.0,
            now,
            peer_ip: None,
            tokens: None,
        };
        // Another decode holds the strings only when a finaliser that ran during this one's
        // allocations decodes too: it makes its own.
        let mut own = None;
        let mut held = self.strings.try_lock();
        let strings = match held.as_deref_mut() {
            Ok(strings) => strings,
            Err(_) => own.insert(StringCache::default()),
        };
        let strings = RefCell::new(strings);
        let received = PyFloat::new(py, now).into_any();
        let new_builder = || EventBuilder::new(py, self, &strings, received.clone());
        let built = with_bytes(data, |data| {
            crate::decode_data_into(data, &ctx, new_builder)
                .map_err(|e| request_error(py, &e, Params::default()))
        })?;
        built.finish()
    }
}

/// The keyword arguments an Event is made with.
const EVENT_FIELDS: [&str; 10] = [
    "event",
    "time",
    "received",
    "token",
    "properties",
    "distinct_id",
    "insert_id",
    "ip",
    "funnel",
    "mp_keys",
];

/// `callable(**dict(zip(names, values)))`, without the dict: pyo3's `call` with keyword arguments
/// builds one, which CPython unpacks again into names and values, and that costs more than making
/// the Event itself.
#[allow(unsafe_code)]
fn call_with_keywords<'py, const N: usize>(
    callable: &Bound<'py, PyAny>,
    names: &Bound<'py, PyTuple>,
    values: &[Bound<'py, PyAny>; N],
) -> PyResult<Bound<'py, PyAny>> {
    assert_eq!(names.len(), N, "one name per value");
    let args = values.each_ref().map(Bound::as_ptr);
    // SAFETY: the GIL is held (the arguments are `Bound`); `args` points at N references that
    // `values` keeps alive for the call, and `names` is a tuple of N str, as vectorcall takes them;
    // the result is a new reference, or null with the exception set.
    unsafe {
        let result =
            pyo3::ffi::PyObject_Vectorcall(callable.as_ptr(), args.as_ptr(), 0, names.as_ptr());
        Bound::from_owned_ptr_or_err(callable.py(), result)
    }
}

/// The payload's events as Python objects, as they are decoded.
struct EventBuilder<'py, 'd> {
    py: Python<'py>,
    types: &'d PyEventDecoder,
    strings: &'d RefCell<&'d mut StringCache>,
    received: Bound<'py, PyAny>,
    events: Bound<'py, PyList>,
    errors: Vec<EventError>,
    total: usize,
    /// The first Python error (memory): the events after it are not made.
    failure: Option<PyErr>,
    last_mp_keys: Option<Py<PyTuple>>,
}

impl<'py, 'd> EventBuilder<'py, 'd> {
    fn new(
        py: Python<'py>,
        types: &'d PyEventDecoder,
        strings: &'d RefCell<&'d mut StringCache>,
        received: Bound<'py, PyAny>,
    ) -> Self {
        Self {
            py,
            types,
            strings,
            received,
            events: PyList::empty(py),
            errors: Vec::new(),
            total: 0,
            failure: None,
            last_mp_keys: None,
        }
    }

    /// The events, or `invalid_events` with them when any event is invalid.
    fn finish(self) -> PyResult<Bound<'py, PyList>> {
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        let Some(first) = self.errors.first() else {
            return Ok(self.events);
        };
        let error = RequestError::InvalidEvents {
            invalid: self.errors.len(),
            total: self.total,
            index: first.index,
            message: first.message.clone(),
        };
        Err(decode_error(
            self.py,
            &error,
            Params::default(),
            self.errors,
            self.events,
        ))
    }

    fn event(&mut self, event: &Normalised<'_>) -> PyResult<()> {
        let py = self.py;
        let mut strings = self.strings.borrow_mut();
        let mut values = PyValues {
            py,
            strings: &mut strings,
        };
        // The Event's own fields first: the properties they were read from take the same objects.
        let token = values.token(event.token);
        let distinct_id = values.optional(event.distinct_id.bytes());
        let insert_id = values.optional(event.insert_id.map(|id| id.bytes()));
        let ip = values.optional(event.ip.bytes());
        let time = PyFloat::new(py, event.time).into_any();
        let same = |token: StrToken<'_>, field: Option<StrToken<'_>>| {
            field.is_some_and(|field| std::ptr::eq(token.raw, field.raw))
        };
        let sent_ip = match event.ip {
            IpValue::Sent(sent) => Some(sent),
            _ => None,
        };
        let properties = PyDict::new(py);
        event.try_for_each_property(|entry| {
            let value = match entry.value {
                Value::Scalar(Scalar::String(s)) if same(s, Some(event.token)) => token.clone(),
                Value::Scalar(Scalar::String(s)) if same(s, event.insert_id) => insert_id.clone(),
                Value::Scalar(Scalar::String(s)) if same(s, sent_ip) => ip.clone(),
                Value::Scalar(scalar) => crate::json::build_scalar(scalar, &mut values)?,
                Value::Json(json) => crate::json::build(json, &mut values)?,
                Value::Time(_) => match whole_number(event.time) {
                    Some(seconds) => seconds.into_pyobject(py)?.into_any(),
                    None => time.clone(),
                },
                Value::DistinctId(_) => distinct_id.clone(),
                Value::Ip(_) => ip.clone(),
            };
            properties.set_item(values.string(entry.key), value)
        })?;
        let mp_keys = self.mp_keys(event.mp_keys().map(|(_, key)| values.string(key)))?;
        let funnel = match event.funnel {
            None => py.None().into_bound(py),
            Some((name, step, goal)) => {
                let (name, goal) = (values.token(name), values.token(goal));
                self.types.funnel_type.bind(py).call1((name, step, goal))?
            }
        };
        let fields = [
            values.token(event.name),
            time,
            self.received.clone(),
            token,
            properties.into_any(),
            distinct_id,
            insert_id,
            ip,
            funnel,
            mp_keys,
        ];
        let event_type = self.types.event_type.bind(py);
        let built = call_with_keywords(event_type, self.types.event_fields.bind(py), &fields)?;
        self.events.append(built)
    }

    /// The tuple of an event's `mp_` keys: the previous event's when they are the same str objects,
    /// as they are when a batch's events have the same keys.
    fn mp_keys(
        &mut self,
        keys: impl Iterator<Item = Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let keys: Vec<_> = keys.collect();
        if let Some(last) = &self.last_mp_keys {
            let last = last.bind(self.py);
            if last.len() == keys.len() && keys.iter().zip(last.iter()).all(|(a, b)| a.is(&b)) {
                return Ok(last.clone().into_any());
            }
        }
        let tuple = PyTuple::new(self.py, keys)?;
        self.last_mp_keys = Some(tuple.clone().unbind());
        Ok(tuple.into_any())
    }
}

impl Sink for EventBuilder<'_, '_> {
    const KEEPS_JSON: bool = false;

    fn event(&mut self, event: &Normalised<'_>) {
        self.total += 1;
        if self.failure.is_none() {
            if let Err(err) = EventBuilder::event(self, event) {
                self.failure = Some(err);
            }
        }
    }

    fn error(&mut self, error: EventError) {
        self.total += 1;
        self.errors.push(error);
    }
}

/// A number the normalised JSON writes without a fraction, which Python then reads as an int.
fn whole_number(value: f64) -> Option<i64> {
    (value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0).then_some(value as i64)
}

/// Python values of JSON values, strings through the cache.
struct PyValues<'py, 'c> {
    py: Python<'py>,
    strings: &'c mut StringCache,
}

impl<'py> PyValues<'py, '_> {
    /// A str of text of the payload, which was checked as UTF-8.
    fn string(&mut self, text: &[u8]) -> Bound<'py, PyAny> {
        self.strings.get(self.py, text).into_any()
    }

    /// The text of a string token.
    fn token(&mut self, token: StrToken<'_>) -> Bound<'py, PyAny> {
        self.string(&token.bytes())
    }

    /// A str of the text, or None.
    fn optional(&mut self, text: Option<Cow<'_, [u8]>>) -> Bound<'py, PyAny> {
        match text {
            Some(text) => self.string(&text),
            None => self.py.None().into_bound(self.py),
        }
    }
}

impl<'py> crate::json::Build for PyValues<'py, '_> {
    type Value = Bound<'py, PyAny>;
    type List = Bound<'py, PyList>;
    type Map = Bound<'py, PyDict>;
    type Error = PyErr;

    fn null(&mut self) -> PyResult<Self::Value> {
        Ok(self.py.None().into_bound(self.py))
    }
    fn bool(&mut self, value: bool) -> PyResult<Self::Value> {
        Ok(PyBool::new(self.py, value).to_owned().into_any())
    }
    fn string(&mut self, text: &[u8]) -> PyResult<Self::Value> {
        Ok(PyValues::string(self, text))
    }
    fn int(&mut self, value: i64) -> PyResult<Self::Value> {
        Ok(value.into_pyobject(self.py)?.into_any())
    }
    #[cold]
    fn big_int(&mut self, text: &str) -> PyResult<Self::Value> {
        self.py.get_type::<PyInt>().call1((text,))
    }
    fn float(&mut self, value: f64) -> PyResult<Self::Value> {
        Ok(PyFloat::new(self.py, value).into_any())
    }
    fn list(&mut self) -> PyResult<Self::List> {
        Ok(PyList::empty(self.py))
    }
    fn push(&mut self, list: &mut Self::List, item: Self::Value) -> PyResult<()> {
        list.append(item)
    }
    fn end_list(&mut self, list: Self::List) -> Self::Value {
        list.into_any()
    }
    fn map(&mut self) -> PyResult<Self::Map> {
        Ok(PyDict::new(self.py))
    }
    fn insert(&mut self, map: &mut Self::Map, key: &[u8], value: Self::Value) -> PyResult<()> {
        map.set_item(PyValues::string(self, key), value)
    }
    fn end_map(&mut self, map: Self::Map) -> Self::Value {
        map.into_any()
    }
}

/// Strings made before, found again by their text: a direct-mapped table, each text in one slot
/// (the last one made there), its bytes kept beside the str to compare without asking Python.
#[derive(Debug)]
struct StringCache {
    slots: Vec<Option<CachedString>>,
}

#[derive(Debug)]
struct CachedString {
    words: Words,
    bytes: [u8; StringCache::MAX_BYTES],
    string: Py<PyString>,
}

impl StringCache {
    const SLOTS: usize = 1024;
    /// Longer texts are made each time: rarely repeated, and slower to compare.
    const MAX_BYTES: usize = 64;

    /// A str of `text`, which is UTF-8.
    fn get<'py>(&mut self, py: Python<'py>, text: &[u8]) -> Bound<'py, PyString> {
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
        }
    }
}

/// A short text's length and its first and last bytes, read as two words: all of a text of up to
/// 16 bytes, and a hash of any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Words {
    len: usize,
    head: u64,
    tail: u64,
}

impl Words {
    fn of(text: &[u8]) -> Self {
        let n = text.len();
        let (head, tail) = if n >= 8 {
            let word = |at: usize| u64::from_le_bytes(text[at..at + 8].try_into().expect("8"));
            (word(0), word(n - 8))
        } else if n >= 4 {
            let word =
                |at: usize| u64::from(u32::from_le_bytes(text[at..at + 4].try_into().expect("4")));
            (word(0), word(n - 4))
        } else if n > 0 {
            let byte = |at: usize| u64::from(text[at]);
            (byte(0) | byte(n / 2) << 8, byte(n - 1))
        } else {
            (0, 0)
        };
        Self { len: n, head, tail }
    }

    fn hash(self) -> u64 {
        let mixed = (self.head ^ self.tail.rotate_left(32) ^ self.len as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        mixed ^ (mixed >> 32)
    }
}

pyo3::create_exception!(
    trackgate._native,
    ReplyError,
    pyo3::exceptions::PyException,
    "An error reply from Redis (`-ERR ...`): handed over as a value, never raised."
);

/// The batcher's reader of Redis's replies: `skip` passes over replies in Rust, `gets` builds one.
#[pyclass(module = "trackgate._native", name = "ReplyReader")]
#[derive(Debug, Default)]
struct PyReplyReader(ReplyBuffer);

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

fn reply_error<'py>(py: Python<'py>, text: &[u8]) -> Bound<'py, PyAny> {
    ReplyError::new_err(String::from_utf8_lossy(text).into_owned())
        .into_value(py)
        .into_bound(py)
        .into_any()
}

/// The reply starting at `pos` of a whole reply, as hiredis gives it: bytes for status and bulk
/// strings, int, None for nil, list, a ReplyError value for an error.
fn build_reply<'py>(py: Python<'py>, reply: &[u8], pos: &mut usize) -> PyResult<Bound<'py, PyAny>> {
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

#[pymodule(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("PACKED_LAYOUT", crate::PACKED_LAYOUT)?;
    m.add("MAX_FUNNEL_STEP", crate::event::MAX_FUNNEL_STEP)?;
    let statuses = PyDict::new(m.py());
    for kind in RequestErrorKind::ALL {
        statuses.set_item(kind.as_str(), kind.status())?;
    }
    m.add("REQUEST_ERROR_STATUS", statuses)?;
    let event_kinds = EventErrorKind::ALL.iter().map(|kind| kind.as_str());
    m.add("EVENT_ERROR_KINDS", PyTuple::new(m.py(), event_kinds)?)?;
    m.add_class::<PyOptions>()?;
    m.add_class::<PyRule>()?;
    m.add("RULES", rules(m.py())?)?;
    m.add_class::<PyTokenSet>()?;
    m.add_class::<PyRequest>()?;
    m.add_class::<PyEventError>()?;
    m.add_class::<PyPartitionBatch>()?;
    m.add_class::<PyDecodeError>()?;
    m.add_class::<PyReplyReader>()?;
    m.add_class::<PyEventDecoder>()?;
    m.add("ReplyError", m.py().get_type::<ReplyError>())?;
    m.add_function(wrap_pyfunction!(decode_request, m)?)?;
    m.add_function(wrap_pyfunction!(decode_data, m)?)?;
    Ok(())
}
