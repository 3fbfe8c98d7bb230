//! `trackgate.decode`'s typed events, made straight from the decoder's.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Mutex;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use super::decode::{check_now, with_bytes, Text};
use super::decoded::{decode_error, request_error};
use super::fastcall::decode_function;
use super::options::PyOptions;
use super::slots::SlotLayout;
use super::strings::StringCache;
use crate::event::{IpValue, Normalised, Sink, Value};
use crate::json::{Scalar, StrToken};
use crate::{Context, EventError, Params, RequestError};

/// Makes the typed events of `trackgate.decode` (msgspec Structs, defined in Python and handed over
/// once) straight from the decoder's events: no JSON is written for Python to read again, and no
/// Python code runs per event.
#[pyclass(module = "trackgate._native", name = "EventDecoder", frozen)]
#[derive(Debug)]
pub(super) struct PyEventDecoder {
    event_type: Py<PyAny>,
    funnel_type: Py<PyAny>,
    /// The names of the Event's fields, in the order `EventBuilder::event` passes them.
    event_fields: Py<PyTuple>,
    /// How an Event is made by filling its slots; without it (a class that is not a plain Struct),
    /// it is called with the fields as keywords.
    event_layout: Option<SlotLayout<{ EVENT_FIELDS.len() }>>,
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
        let event_layout = SlotLayout::of(event.bind(py), &EVENT_FIELDS);
        Ok(Self {
            event_type: event,
            funnel_type: funnel,
            event_fields: PyTuple::new(py, names)?.unbind(),
            event_layout,
            default_options: Py::new(py, PyOptions(crate::Options::default()))?,
            strings: Mutex::new(StringCache::default()),
        })
    }

    /// `trackgate.decode`: the function that decodes with this decoder.
    #[getter(decode)]
    fn decode_function<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        decode_function(slf)
    }
}

impl PyEventDecoder {
    /// The events of a `data` value (see `trackgate.decode`), `now` by default the clock's, `options`
    /// the default ones or those `rules` give. Raises DecodeError when the payload is unusable, and
    /// with kind `invalid_events` (the valid events in `.events`) when any event is invalid.
    pub(super) fn decode<'py>(
        &self,
        py: Python<'py>,
        data: Text<'_>,
        now: Option<f64>,
        options: Option<Bound<'py, PyOptions>>,
        rules: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let options = match (options, rules) {
            (Some(_), Some(_)) => {
                return Err(PyTypeError::new_err(
                    "pass either options or individual rules, not both",
                ))
            }
            (Some(options), None) => options,
            (None, Some(rules)) => {
                (py.get_type::<PyOptions>().call((), Some(rules))?).cast_into::<PyOptions>()?
            }
            (None, None) => self.default_options.bind(py).clone(),
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
pub(super) const EVENT_FIELDS: [&str; 10] = [
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
pub(super) fn call_with_keywords<'py, const N: usize>(
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

/// An empty dict with room for `n` items. An event's properties are known before its dict is made:
/// made empty, the dict would be grown (all its items moved) once or twice on the way. CPython's
/// constructor for this is private (`_PyDict_NewPresized`, which pyo3 leaves out), but exported and
/// kept for Cython, which calls it for every dict literal it compiles. It makes the general kind of
/// table, as orjson's dicts are: each entry keeps its key's hash (a word more per item), and a lookup
/// by an equal str that is not the same object compares the two.
#[allow(unsafe_code)]
pub(super) fn presized_dict(py: Python<'_>, n: usize) -> PyResult<Bound<'_, PyDict>> {
    extern "C" {
        fn _PyDict_NewPresized(minused: pyo3::ffi::Py_ssize_t) -> *mut pyo3::ffi::PyObject;
    }
    let n = pyo3::ffi::Py_ssize_t::try_from(n).unwrap_or(pyo3::ffi::Py_ssize_t::MAX);
    // SAFETY: the GIL is held (`py`); the result is a new reference to a dict, or null with the
    // exception set.
    unsafe {
        let dict = _PyDict_NewPresized(n);
        Ok(Bound::from_owned_ptr_or_err(py, dict)?.cast_into_unchecked())
    }
}

/// `dict[key] = value`, as `PyDict::set_item` does it but without its conversions, which cost
/// a tenth of an insertion: the key and value are Python objects already.
#[allow(unsafe_code)]
pub(super) fn set_item(
    dict: &Bound<'_, PyDict>,
    key: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    // SAFETY: the GIL is held (the arguments are `Bound`); PyDict_SetItem borrows the three
    // objects, which the caller keeps alive, and returns -1 with the exception set on failure.
    match unsafe { pyo3::ffi::PyDict_SetItem(dict.as_ptr(), key.as_ptr(), value.as_ptr()) } {
        0 => Ok(()),
        _ => Err(PyErr::fetch(dict.py())),
    }
}

/// The payload's events as Python objects, as they are decoded.
pub(super) struct EventBuilder<'py, 'd> {
    py: Python<'py>,
    types: &'d PyEventDecoder,
    strings: &'d RefCell<&'d mut StringCache>,
    received: Bound<'py, PyAny>,
    events: Bound<'py, PyList>,
    errors: Vec<EventError>,
    total: usize,
    /// The first Python error (memory): the events after it are not made.
    failure: Option<PyErr>,
    /// The `mp_` keys of the event being made.
    mp_keys: Vec<Bound<'py, PyAny>>,
    /// The keys and values of the properties of the event being made.
    keys: Vec<Bound<'py, PyAny>>,
    values: Vec<Bound<'py, PyAny>>,
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
            mp_keys: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
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
        let (keys, property_values, mp_keys) =
            (&mut self.keys, &mut self.values, &mut self.mp_keys);
        keys.clear();
        property_values.clear();
        mp_keys.clear();
        // At once: grown push by push, each would be moved three times on the way.
        keys.reserve(event.property_count());
        property_values.reserve(event.property_count());
        event.try_for_each_property(|entry| {
            let value = match entry.value {
                Value::Scalar(&Scalar::String(s)) if same(s, Some(event.token)) => token.clone(),
                Value::Scalar(&Scalar::String(s)) if same(s, event.insert_id) => insert_id.clone(),
                Value::Scalar(&Scalar::String(s)) if same(s, sent_ip) => ip.clone(),
                Value::Scalar(&Scalar::String(s)) => {
                    let text = s.bytes();
                    match values.strings.properties.value(py, keys.len(), &text) {
                        Some(value) => value,
                        None => values.string(&text),
                    }
                }
                Value::Scalar(&scalar) => crate::json::build_scalar(scalar, &mut values)?,
                Value::Json(json) => crate::json::build(json, &mut values)?,
                Value::Time(_) => match whole_number(event.time) {
                    Some(seconds) => seconds.into_pyobject(py)?.into_any(),
                    None => time.clone(),
                },
                Value::DistinctId(_) => distinct_id.clone(),
                Value::Ip(_) => ip.clone(),
            };
            let key = match values.strings.properties.key(py, keys.len(), entry.key) {
                Some(key) => key,
                None => values.string(entry.key),
            };
            if entry.key.starts_with(b"mp_") {
                mp_keys.push(key.clone());
            }
            keys.push(key);
            property_values.push(value);
            Ok::<_, PyErr>(())
        })?;
        let properties = values.strings.properties.dict(py, keys, property_values)?;
        let mp_keys = mp_keys_tuple(py, &self.mp_keys, &mut values.strings.mp_keys)?;
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
        let built = if let Some(layout) = &self.types.event_layout {
            layout.make(py, fields)?
        } else {
            let names = self.types.event_fields.bind(py);
            call_with_keywords(self.types.event_type.bind(py), names, &fields)?
        };
        self.events.append(built)
    }
}

/// The tuple of an event's `mp_` keys: the `last` one made when they are the same str objects, as
/// they are when events have the same keys.
fn mp_keys_tuple<'py>(
    py: Python<'py>,
    keys: &[Bound<'py, PyAny>],
    last: &mut Option<Py<PyTuple>>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(last) = last.as_ref().map(|last| last.bind(py)) {
        let same = last.as_slice();
        if same.len() == keys.len() && keys.iter().zip(same).all(|(a, b)| a.is(b)) {
            return Ok(last.clone().into_any());
        }
    }
    let tuple = PyTuple::new(py, keys)?;
    *last = Some(tuple.clone().unbind());
    Ok(tuple.into_any())
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
pub(super) fn whole_number(value: f64) -> Option<i64> {
    (value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0).then_some(value as i64)
}

/// Python values of JSON values, strings through the cache.
pub(super) struct PyValues<'py, 'c> {
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
