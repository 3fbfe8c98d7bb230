//! `trackgate.decode` as a builtin function that CPython calls with its fastest convention.
//!
//! `decode(data, *, now=None, options=None, **rules)` takes any rule as a keyword. pyo3 gives a
//! function with `**kwargs` the tuple-and-dict convention, in which every call builds a tuple and a
//! dict, and a Python function around a native one costs a frame and a dict as well. This one is
//! called with its arguments where they lie (`METH_FASTCALL | METH_KEYWORDS`), and makes a dict only
//! when rules are given.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use super::decode::Text;
use super::events::PyEventDecoder;
use super::options::PyOptions;

/// The function that decodes with `decoder`.
#[allow(unsafe_code)]
pub(super) fn decode_function<'py>(
    decoder: &Bound<'py, PyEventDecoder>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the GIL is held (`decoder` is bound); the definition is static and CPython only reads
    // it; the function holds a reference to `decoder`, which `decode` is called with. The result is
    // a new reference, or null with the exception set.
    unsafe {
        let function = ffi::PyCMethod_New(
            std::ptr::addr_of!(DECODE.0).cast_mut(),
            decoder.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(decoder.py(), function)
    }
}

/// The definition the function is made from.
struct Definition(ffi::PyMethodDef);

// SAFETY: the definition is made once, here, and only read after, by CPython with the GIL held.
#[allow(unsafe_code)]
unsafe impl Sync for Definition {}

static DECODE: Definition = Definition(ffi::PyMethodDef {
    ml_name: c"decode".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: decode,
    },
    ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
    ml_doc: DOC.as_ptr(),
});

/// The function's signature (before `--`, where `inspect.signature` reads it) and its help.
const DOC: &std::ffi::CStr = c"decode($self, data, *, now=None, options=None, **rules)
--

Decode the value of a `data` parameter into events.

`data` is base64 (standard or URL-safe, padded or not), raw JSON, or gzip bytes, holding one event
or an array of events. `rules` are `Options` fields (`max_age=5 * 86400`, `max_depth=5`, ...), or
pass a ready `options`; `now` is the receive time, the clock's by default. Raises `DecodeError`
when the payload is unusable or when any event is invalid; the error then carries the valid events
in `.events` and one entry per invalid event in `.errors()`.";

/// CPython's entry: `call`, with the arguments as CPython has them, and Rust's panics and errors
/// turned into Python exceptions.
#[allow(unsafe_code)]
unsafe extern "C" fn decode(
    decoder: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the GIL held; `decoder` is the EventDecoder the function was
    // made with; `args` points at the `nargs` positional arguments, then at the values of the
    // keyword arguments, whose names are the tuple `kwnames` (null when there are none). All are
    // borrowed for the call, and only read.
    let py = unsafe { Python::assume_attached() };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let decoder = unsafe { Borrowed::from_ptr(py, decoder).cast_unchecked::<PyEventDecoder>() };
        let names = (!kwnames.is_null())
            .then(|| unsafe { Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>() });
        let positional = usize::try_from(nargs).unwrap_or(0);
        let count = positional + names.map_or(0, |names| names.len());
        let arg = |i: usize| {
            assert!(i < count, "an argument CPython passed");
            unsafe { Borrowed::from_ptr(py, *args.add(i)) }
        };
        call(decoder, positional, names, &arg)
    }));
    match outcome {
        Ok(Ok(events)) => events.into_ptr(),
        Ok(Err(err)) => {
            err.restore(py);
            std::ptr::null_mut()
        }
        Err(panic) => {
            let message = (panic.downcast_ref::<&str>().map(|m| (*m).to_owned()))
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "trackgate.decode panicked".to_owned());
            PanicException::new_err(message).restore(py);
            std::ptr::null_mut()
        }
    }
}

/// `decode(data, *, now=None, options=None, **rules)`, its arguments sorted out: `positional` of
/// them by position, then one per name of `names`; `arg(i)` is the `i`-th.
fn call<'a, 'py>(
    decoder: Borrowed<'a, 'py, PyEventDecoder>,
    positional: usize,
    names: Option<Borrowed<'a, 'py, PyTuple>>,
    arg: &dyn Fn(usize) -> Borrowed<'a, 'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let py = decoder.py();
    if positional > 1 {
        return Err(PyTypeError::new_err(format!(
            "decode() takes 1 positional argument but {positional} were given"
        )));
    }
    let mut data = (positional == 1).then(|| arg(0));
    let (mut now, mut options, mut rules) = (None, None, None::<Bound<'py, PyDict>>);
    for (i, name) in names
        .iter()
        .flat_map(|names| names.iter_borrowed())
        .enumerate()
    {
        let value = arg(positional + i);
        let name = name.cast::<PyString>()?;
        // The names a call site writes are interned: most are found without reading their text.
        let text = if name.is(intern!(py, "now")) {
            "now"
        } else if name.is(intern!(py, "options")) {
            "options"
        } else {
            name.to_str()?
        };
        let parameter = match text {
            "data" => &mut data,
            "now" => &mut now,
            "options" => &mut options,
            _ => {
                let rules = rules.get_or_insert_with(|| PyDict::new(py));
                rules.set_item(name, value)?;
                continue;
            }
        };
        if parameter.replace(value).is_some() {
            return Err(PyTypeError::new_err(format!(
                "decode() got multiple values for argument '{text}'"
            )));
        }
    }
    let Some(data) = data else {
        return Err(PyTypeError::new_err(
            "decode() missing 1 required positional argument: 'data'",
        ));
    };
    let data = data
        .extract::<Text<'py>>()
        .map_err(|e| argument_error(py, "data", &e))?;
    let now = match now.filter(|now| !now.is_none()) {
        Some(now) => Some(
            now.extract::<f64>()
                .map_err(|e| argument_error(py, "now", &e))?,
        ),
        None => None,
    };
    let options = match options.filter(|options| !options.is_none()) {
        Some(options) => Some(
            (options.cast::<PyOptions>())
                .map_err(|e| argument_error(py, "options", &e.into()))?
                .to_owned(),
        ),
        None => None,
    };
    decoder.get().decode(py, data, now, options, rules.as_ref())
}

/// An argument's error, naming it, as pyo3's own functions name theirs.
#[cold]
fn argument_error(py: Python<'_>, name: &str, error: &PyErr) -> PyErr {
    PyTypeError::new_err(format!("argument '{name}': {}", error.value(py)))
}
