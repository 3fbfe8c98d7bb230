//! Instances of a msgspec Struct made by filling their slots.

use pyo3::exceptions::PyMemoryError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

/// Where the instances of a class keep their fields: each in a member slot of its own, as a msgspec
/// Struct keeps them. Such an instance is made here as its constructor makes it when given every
/// field, without the constructor's work per call of matching each keyword to its field, which
/// costs more than the instance.
#[derive(Debug)]
pub(super) struct SlotLayout<const N: usize> {
    class: Py<PyType>,
    /// Of each field, in the order the values are given.
    offsets: [usize; N],
}

impl<const N: usize> SlotLayout<N> {
    /// The layout of `class` for the fields `names`, when an instance of it is no more than its
    /// fields: its fields are `names` (`__struct_fields__`, so none is left unset), each in an
    /// object slot inside the instance, and it has no `__post_init__` to call. Otherwise None, and
    /// the class is called.
    pub(super) fn of(class: &Bound<'_, PyAny>, names: &[&str; N]) -> Option<Self> {
        let class = class.cast::<PyType>().ok()?;
        let fields = class.getattr("__struct_fields__").ok()?;
        let fields = fields.cast::<PyTuple>().ok()?;
        let same_fields = fields.len() == N
            && fields.iter().zip(names).all(|(field, name)| {
                field
                    .cast::<PyString>()
                    .is_ok_and(|field| field.to_str().is_ok_and(|field| field == *name))
            });
        if !same_fields || class.hasattr("__post_init__").ok()? {
            return None;
        }
        let mut offsets = [0; N];
        for (offset, name) in offsets.iter_mut().zip(names) {
            *offset = slot_offset(class, &class.getattr(*name).ok()?)?;
        }
        let mut sorted = offsets;
        sorted.sort_unstable();
        if sorted.windows(2).any(|pair| pair[0] == pair[1]) {
            return None;
        }
        Some(Self {
            class: class.clone().unbind(),
            offsets,
        })
    }

    /// An instance with `values` in its fields, in the order of the names the layout was read for.
    #[allow(unsafe_code)]
    pub(super) fn make<'py>(
        &self,
        py: Python<'py>,
        values: [Bound<'py, PyAny>; N],
    ) -> PyResult<Bound<'py, PyAny>> {
        let class = self.class.bind(py).as_type_ptr();
        // SAFETY: the GIL is held (`py`). `of` checked that `class` is a type whose instances hold
        // these fields in object slots at these offsets, inside its basic size, and nothing else
        // that its constructor sets; its allocator gives a zeroed instance (GC-tracked when the
        // type is, as msgspec's constructor leaves an Event), or null with the exception set. Each
        // slot, null until then, takes a new reference to its value; no Python code runs between
        // the allocation and the last slot written.
        unsafe {
            let alloc = (*class).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
            let instance = alloc(class, 0);
            if instance.is_null() {
                return Err(PyErr::take(py).unwrap_or_else(|| PyMemoryError::new_err(())));
            }
            for (&offset, value) in self.offsets.iter().zip(values) {
                // Aligned: `of` checked the offset.
                let slot = instance.byte_add(offset).cast::<*mut ffi::PyObject>();
                slot.write(value.into_ptr());
            }
            Ok(Bound::from_owned_ptr(py, instance))
        }
    }
}

/// The offset of the object slot `descriptor` gives access to in the instances of `class`, when it
/// is a member descriptor of one (of the class or a base) inside the instance's basic size.
#[allow(unsafe_code)]
fn slot_offset(class: &Bound<'_, PyType>, descriptor: &Bound<'_, PyAny>) -> Option<usize> {
    // SAFETY: the GIL is held (the arguments are bound). The descriptor is read as a member
    // descriptor only once its type is checked to be exactly that; its member definition lives as
    // long as the class that defines it, which `class` (or a base of it) is; the class object is a
    // type object.
    unsafe {
        let member_type = std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type);
        if ffi::Py_TYPE(descriptor.as_ptr()) != member_type {
            return None;
        }
        let descr = descriptor.as_ptr().cast::<ffi::PyMemberDescrObject>();
        let owner = (*descr).d_common.d_type;
        if ffi::PyType_IsSubtype(class.as_type_ptr(), owner) == 0 {
            return None;
        }
        let member = &*(*descr).d_member;
        let class = class.as_type_ptr();
        let offset = usize::try_from(member.offset).ok()?;
        let size = usize::try_from((*class).tp_basicsize).ok()?;
        let inside = offset >= std::mem::size_of::<ffi::PyObject>()
            && offset + std::mem::size_of::<*mut ffi::PyObject>() <= size
            && offset % std::mem::align_of::<*mut ffi::PyObject>() == 0;
        let object_slot = member.type_code == ffi::Py_T_OBJECT_EX;
        (inside && object_slot && (*class).tp_itemsize == 0).then_some(offset)
    }
}
