//! The decoding functions: the gateway's `decode_request` and the library's `decode_data`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use super::decoded::{request_error, PyRequest};
use super::options::{PyOptions, PyTokenSet};
use super::DETACH_FROM_BYTES;
use crate::{request, Context, Decoded, Params, RequestError};

/// `str` or `bytes`, as the caller has it.
pub(super) enum Text<'py> {
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
pub(super) fn not_text(obj: Borrowed<'_, '_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!("expected str or bytes, not {}", type_name(obj)))
}

/// For messages: the name of an object's type.
pub(super) fn type_name(obj: Borrowed<'_, '_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

pub(super) fn with_bytes<R>(text: Text<'_>, f: impl FnOnce(&[u8]) -> PyResult<R>) -> PyResult<R> {
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
pub(super) fn run(
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
pub(super) fn decode_request(
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
    let http = Http {
        body,
        content_type,
        content_encoding,
        now,
        options,
        peer_ip,
        tokens,
    };
    http.decode(py, query, crate::decode_request)
}

/// One HTTP request to an ingestion endpoint, as the binding's functions take it (but for the query
/// string, which `decode` reads as bytes).
pub(super) struct Http<'a> {
    pub(super) body: &'a [u8],
    pub(super) content_type: Option<&'a str>,
    pub(super) content_encoding: Option<&'a str>,
    pub(super) now: f64,
    pub(super) options: &'a PyOptions,
    pub(super) peer_ip: Option<&'a str>,
    pub(super) tokens: Option<&'a PyTokenSet>,
}

impl Http<'_> {
    /// The request read by `read`; a refused one answered as its parameters ask.
    pub(super) fn decode(
        &self,
        py: Python<'_>,
        query: Text<'_>,
        read: impl Fn(
                &[u8],
                &[u8],
                Option<&str>,
                Option<&str>,
                &Context<'_>,
            ) -> Result<Decoded, RequestError>
            + Sync,
    ) -> PyResult<PyRequest> {
        check_now(self.now)?;
        let rules = &self.options.0;
        let ctx = Context {
            options: rules,
            now: self.now,
            peer_ip: self.peer_ip,
            tokens: self.tokens.map(|t| &t.0),
        };
        let (body, content_type, content_encoding) =
            (self.body, self.content_type, self.content_encoding);
        with_bytes(query, |query| {
            run(
                py,
                query.len() + body.len(),
                || read(query, body, content_type, content_encoding, &ctx),
                || {
                    let max = rules.max_request_bytes;
                    request::answer_params(query, body, content_type, content_encoding, max)
                },
            )
        })
    }
}

/// Decodes the value of one `data` parameter: base64 in any variant, raw JSON, or gzip bytes.
#[pyfunction]
#[pyo3(signature = (data, *, now, options))]
pub(super) fn decode_data(
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

pub(super) fn check_now(now: f64) -> PyResult<()> {
    if now.is_finite() && now >= 0.0 {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "now must be a finite number of seconds since 1970, got {now}"
        )))
    }
}
