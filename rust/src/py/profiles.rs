//! The decoding of `/engage` and `/groups` requests: profile updates, handed to Python as a `Request`
//! like `/track`'s events; and where a profile lives, for the reports that read profiles.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::decode::{Http, Text};
use super::decoded::PyRequest;
use super::options::{PyOptions, PyTokenSet};
use crate::Target;

/// Decodes one /engage request, or with `groups` one /groups request: the raw query string and body,
/// and the two headers that shape them.
#[pyfunction]
#[pyo3(signature = (query, body, content_type = None, content_encoding = None, *, groups, now, options, peer_ip = None, tokens = None))]
#[allow(clippy::too_many_arguments)]
pub(super) fn decode_profile_request(
    py: Python<'_>,
    query: Text<'_>,
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    groups: bool,
    now: f64,
    options: &PyOptions,
    peer_ip: Option<&str>,
    tokens: Option<&PyTokenSet>,
) -> PyResult<PyRequest> {
    let target = if groups {
        Target::Groups
    } else {
        Target::People
    };
    let http = Http {
        body,
        content_type,
        content_encoding,
        now,
        options,
        peer_ip,
        tokens,
    };
    http.decode(
        py,
        query,
        |query, body, content_type, content_encoding, ctx| {
            crate::decode_profile_request(query, body, content_type, content_encoding, ctx, target)
        },
    )
}

/// The partition of a person's profile (`id` their distinct_id), or with `group_key` of a group's.
#[pyfunction]
#[pyo3(signature = (id, *, group_key = None, partitions))]
pub(super) fn profile_partition(
    id: &str,
    group_key: Option<&str>,
    partitions: u32,
) -> PyResult<u32> {
    if partitions == 0 {
        return Err(PyValueError::new_err("partitions must be at least 1"));
    }
    Ok(crate::profile::partition(
        group_key.map(str::as_bytes),
        id.as_bytes(),
        partitions,
    ))
}
