//! The C ABI: the wall between tierkv and its host.
//!
//! Core types: [`TierkvStatus`] (every export returns one), opaque
//! `TierkvManager` handles, and the thread-local last error.
//!
//! Workflow of every export:
//! 1. [`guard`] runs the body under `catch_unwind`: a panic becomes
//!    `TIERKV_STATUS_INTERNAL` with its message, never an unwind into C.
//! 2. The body validates each pointer and length ([`slice_in`], [`slice_out`],
//!    [`out_ptr`]): null, misaligned, or a length whose byte size overflows is
//!    `TIERKV_STATUS_INVALID_ARGUMENT`; a handle that is not live is too.
//! 3. The body holds the manager through the handle registry ([`handles`]), so a
//!    concurrent `tierkv_manager_destroy` waits for it instead of freeing the
//!    manager mid-call; it runs with the manager's log subscriber in scope.
//! 4. On error, the message is stored for the calling thread
//!    (`tierkv_last_error`); on success the last error is cleared.
//!
//! Handles are ids that are never reused in the process (not addresses), so a
//! stale handle or a double destroy is an error, never another manager. Two
//! managers in one process (or the library loaded twice) are independent.

mod api;
mod disk_api;
mod events_api;
mod handles;
mod hw_api;
mod layer_api;
mod pool_api;
mod pq_api;
mod semantic_api;
mod types;

pub use api::*;
pub use disk_api::*;
pub use events_api::*;
pub use hw_api::*;
pub use layer_api::*;
pub use pool_api::*;
pub use pq_api::*;
pub use semantic_api::*;
pub use types::*;

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

pub(crate) use handles::{Held, Registry};

use crate::manager::ErrorKind;
use crate::Manager;

/// Status code of every export.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierkvStatus {
    /// Success.
    Ok = 0,
    /// A pointer, length, handle or value is invalid; nothing was changed.
    InvalidArgument = 1,
    /// A `TIERKV_*` variable is invalid (the message names it).
    Config = 2,
    /// A tier has no room (for example the shared-memory filesystem is full).
    NoSpace = 3,
    /// An OS resource is unavailable (file, mapping, lock timeout).
    Unavailable = 4,
    /// Not enough free engine blocks: nothing was changed.
    Insufficient = 5,
    /// The call needs state that is missing (for example no layout registered).
    State = 6,
    /// The output buffer is too small; the needed size was written.
    BufferTooSmall = 7,
    /// A bug inside tierkv (a caught panic); the host is unaffected.
    Internal = 8,
}

/// An error on its way out through the ABI.
#[derive(Debug)]
pub struct FfiError {
    /// The status to return.
    pub status: TierkvStatus,
    /// The message for `tierkv_last_error`.
    pub message: String,
}

impl FfiError {
    /// An invalid-argument error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: TierkvStatus::InvalidArgument,
            message: message.into(),
        }
    }
}

impl From<crate::ManagerError> for FfiError {
    fn from(e: crate::ManagerError) -> Self {
        let status = match e.kind() {
            ErrorKind::Config => TierkvStatus::Config,
            ErrorKind::InvalidArgument => TierkvStatus::InvalidArgument,
            ErrorKind::NoSpace => TierkvStatus::NoSpace,
            ErrorKind::Unavailable => TierkvStatus::Unavailable,
            ErrorKind::Insufficient => TierkvStatus::Insufficient,
            ErrorKind::State => TierkvStatus::State,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Pointer to the calling thread's last error text (empty if the last call
/// succeeded). Valid until the thread's next tierkv call.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Runs an export body: catches panics, records the error text, returns the status.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), FfiError>) -> TierkvStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            TierkvStatus::Ok
        }
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(panic) => {
            set_last_error(&panic_text(&*panic));
            TierkvStatus::Internal
        }
    }
}

/// The error text of a panic caught at the wall (`tierkv_last_error`'s, and the
/// C++ bridge's exception text).
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error in tierkv: {msg}")
}

static MANAGERS: Registry<Manager> = Registry::new();

/// An opaque manager handle. Created by `tierkv_manager_create`, freed by
/// `tierkv_manager_destroy`. Never dereferenced: its value is an id in the
/// handle registry, never reused (see [`handles`]).
pub struct TierkvManager {
    _private: [u8; 0],
}

pub(crate) fn register_handle(mgr: Arc<Manager>) -> *mut TierkvManager {
    MANAGERS.insert(mgr) as usize as *mut TierkvManager
}

/// Unregisters a manager handle (new calls on it fail at once) and waits for the
/// calls in flight on it to return.
pub(crate) fn unregister_handle(h: *mut TierkvManager) -> Result<Arc<Manager>, FfiError> {
    MANAGERS
        .remove(h as usize as u64)
        .ok_or_else(|| FfiError::invalid("unknown or already destroyed manager handle"))
}

/// The live manager behind a handle, held for one call.
pub(crate) fn manager(h: *const TierkvManager) -> Result<Held<Manager>, FfiError> {
    if h.is_null() {
        return Err(FfiError::invalid("manager handle is null"));
    }
    MANAGERS
        .get(h as usize as u64)
        .ok_or_else(|| FfiError::invalid("unknown or already destroyed manager handle"))
}

fn check_ptr<T>(p: *const T, what: &str) -> Result<(), FfiError> {
    if p.is_null() {
        return Err(FfiError::invalid(format!("{what} is null")));
    }
    if !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(FfiError::invalid(format!(
            "{what} is misaligned (needs {}-byte alignment)",
            std::mem::align_of::<T>()
        )));
    }
    Ok(())
}

fn check_len<T>(n: usize, what: &str) -> Result<(), FfiError> {
    if n > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(FfiError::invalid(format!("{what} length {n} overflows")));
    }
    Ok(())
}

/// Borrows `n` elements at `p` for reading. `n == 0` accepts any pointer.
///
/// # Safety
/// If `n > 0`, `p` must point to `n` initialised elements valid for the call.
pub(crate) unsafe fn slice_in<'a, T>(p: *const T, n: usize, what: &str) -> Result<&'a [T], FfiError> {
    if n == 0 {
        return Ok(&[]);
    }
    check_ptr(p, what)?;
    check_len::<T>(n, what)?;
    // SAFETY: non-null, aligned, size does not overflow; validity is the caller's
    // contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Borrows `n` elements at `p` for writing. `n == 0` accepts any pointer.
///
/// # Safety
/// If `n > 0`, `p` must point to `n` elements valid for writes during the call.
pub(crate) unsafe fn slice_out<'a, T>(p: *mut T, n: usize, what: &str) -> Result<&'a mut [T], FfiError> {
    if n == 0 {
        return Ok(&mut []);
    }
    check_ptr(p, what)?;
    check_len::<T>(n, what)?;
    // SAFETY: as in slice_in, for writes.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, n) })
}

/// Borrows a per-block result array (null allowed: `None`) and fills it with
/// `failed` before anything else can fail, so that on any non-OK status every entry
/// already says the block was not done.
///
/// # Safety
/// If non-null and `n > 0`, `p` must be valid for `n` writes during the call.
pub(crate) unsafe fn prefill<'a>(p: *mut u8, n: usize, failed: u8) -> Result<Option<&'a mut [u8]>, FfiError> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract.
    let out = unsafe { slice_out(p, n, "out_results") }?;
    out.fill(failed);
    Ok(Some(out))
}

/// Borrows one output value.
///
/// # Safety
/// `p` must be valid for writes of one `T` during the call.
pub(crate) unsafe fn out_ptr<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, FfiError> {
    check_ptr(p, what)?;
    // SAFETY: non-null and aligned; validity is the caller's contract.
    Ok(unsafe { &mut *p })
}
