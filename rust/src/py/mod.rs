//! The Python binding, `trackgate._native`: the only module that knows about Python (pyo3 is used
//! nowhere else). On the gateway's path results stay in Rust until asked for: no Python object is made
//! per property, and none per event. `trackgate.decode` makes its typed events here, straight from the
//! decoder's.
//!
//! `options` holds the rules and tokens, `decode` the decoding functions (`profiles` those of `/engage`
//! and `/groups`, `imports` that of `/import`), `decoded` what a decoded request hands Python, `events`
//! and `strings` the typed events of `trackgate.decode`, `fastcall` the function itself, `reply_reader`
//! the batcher's reader of Redis's replies.

mod decode;
mod decoded;
mod events;
mod fastcall;
mod imports;
mod options;
mod profiles;
mod properties;
mod reply_reader;
mod slots;
mod strings;

use decode::{decode_data, decode_request};
use decoded::{PyDecodeError, PyEventError, PyPartitionBatch, PyRequest};
use events::PyEventDecoder;
use imports::decode_import_request;
use options::{rules, PyOptions, PyRule, PyTokenSet};
use profiles::{decode_profile_request, profile_partition};
use reply_reader::{PyReplyReader, ReplyError};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::{EventErrorKind, RequestErrorKind};

/// Requests larger than this are decoded with the GIL released, so other threads run meanwhile.
pub(super) const DETACH_FROM_BYTES: usize = 64 * 1024;

#[pymodule(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("PACKED_LAYOUT", crate::PACKED_LAYOUT)?;
    m.add("DEDUP_HASH_BYTES", crate::resp::DEDUP_HASH_BYTES)?;
    m.add("MAX_FUNNEL_STEP", crate::event::MAX_FUNNEL_STEP)?;
    m.add("IMPORT_EARLIEST_TIME", crate::import::EARLIEST_TIME)?;
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
    m.add_function(wrap_pyfunction!(decode_profile_request, m)?)?;
    m.add_function(wrap_pyfunction!(decode_import_request, m)?)?;
    m.add_function(wrap_pyfunction!(profile_partition, m)?)?;
    Ok(())
}
