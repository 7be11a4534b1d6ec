//! The C surface of `csrc/binding.cpp`. Every function but the two frees returns NULL on success or
//! a malloc'd error message that [`take_error`] turns into a `String` (and frees).
use std::ffi::{c_char, c_int, c_void, CStr};

use torch_sys::C_tensor;

extern "C" {
    pub fn alp_dist_free_error(message: *mut c_char);
    pub fn alp_dist_has_nccl() -> c_int;
    pub fn alp_dist_new(
        host: *const c_char,
        port: u16,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        backend: c_int,
        loopback: c_int,
        store_server: c_int,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn alp_dist_free(group: *mut c_void);
    pub fn alp_dist_all_reduce_sum(
        group: *mut c_void,
        tensors: *const *mut C_tensor,
        n: usize,
        bucket_bytes: i64,
    ) -> *mut c_char;
    pub fn alp_dist_broadcast(
        group: *mut c_void,
        tensors: *const *mut C_tensor,
        n: usize,
        root: c_int,
        bucket_bytes: i64,
    ) -> *mut c_char;
    pub fn alp_dist_all_gather(
        group: *mut c_void,
        input: *mut C_tensor,
        outputs: *const *mut C_tensor,
        n: usize,
    ) -> *mut c_char;
    pub fn alp_dist_barrier(group: *mut c_void) -> *mut c_char;
}

/// `Ok(())` for NULL, else the message (freed here).
pub fn take_error(message: *mut c_char) -> Result<(), String> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-NULL return of the binding is a NUL-terminated malloc'd string we own.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    unsafe { alp_dist_free_error(message) };
    Err(text)
}
