//! The decoding of `/import` requests for the project the gateway authenticated them for.

use pyo3::prelude::*;

use super::decode::{Http, Text};
use super::decoded::PyRequest;
use super::options::PyOptions;
use crate::import::Project;

/// Decodes one /import request for the project whose token is `token`: the raw query string and body,
/// and the two headers that shape them. Events of days more than `counter_retention_days` before
/// `now`'s are stored but not counted.
#[pyfunction]
#[pyo3(signature = (query, body, content_type = None, content_encoding = None, *, token, now, options, counter_retention_days, peer_ip = None))]
#[allow(clippy::too_many_arguments)]
pub(super) fn decode_import_request(
    py: Python<'_>,
    query: Text<'_>,
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    token: &str,
    now: f64,
    options: &PyOptions,
    counter_retention_days: u32,
    peer_ip: Option<&str>,
) -> PyResult<PyRequest> {
    let http = Http {
        body,
        content_type,
        content_encoding,
        now,
        options,
        peer_ip,
        tokens: None,
    };
    let project = Project {
        token,
        counter_retention_days,
    };
    http.decode(
        py,
        query,
        |query, body, content_type, content_encoding, ctx| {
            crate::decode_import_request(query, body, content_type, content_encoding, ctx, &project)
        },
    )
}
