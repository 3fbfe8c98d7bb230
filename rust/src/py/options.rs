//! The rules (`Options`, made from `options.rs`'s one definition) and the tokens, as Python sees them.

use std::collections::HashSet;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use super::decode::type_name;

#[pyclass(module = "trackgate._native", name = "Options", frozen)]
#[derive(Debug, Clone)]
pub(super) struct PyOptions(pub(super) crate::Options);

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
        pub(super) fn rules(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
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
pub(super) trait RuleValue: Copy + PartialEq + for<'py> IntoPyObject<'py> {
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
        // A rule without a maximum takes infinity too: no limit (/import's `max_age`).
        if (value.is_finite() || max.is_infinite()) && (min..=max).contains(&value) {
            return Ok(value);
        }
        let bounds = if max == Self::UNBOUNDED {
            format!(">= {min}, or inf")
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
pub(super) struct PyRule {
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
pub(super) fn limit(
    name: &str,
    value: &Bound<'_, PyAny>,
    min: usize,
    max: usize,
) -> PyResult<usize> {
    if !value.is_instance_of::<PyInt>() || value.is_instance_of::<PyBool>() {
        return Err(not_an_int(name, value));
    }
    match value.extract::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(out_of_range(name, value, min, max)),
    }
}

#[cold]
pub(super) fn not_an_int(name: &str, value: &Bound<'_, PyAny>) -> PyErr {
    let type_name = type_name(value.as_borrowed());
    PyTypeError::new_err(format!("{name} must be an int, not {type_name}"))
}

#[cold]
pub(super) fn out_of_range(name: &str, value: &Bound<'_, PyAny>, min: usize, max: usize) -> PyErr {
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
pub(super) struct PyTokenSet(pub(super) HashSet<String>);

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
pub(super) fn not_a_token(token: &Bound<'_, PyAny>) -> PyErr {
    let type_name = type_name(token.as_borrowed());
    PyTypeError::new_err(format!("tokens must be str, not {type_name}"))
}
