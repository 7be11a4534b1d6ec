//! A c10d process group: the TCPStore rendezvous and the collectives, through `csrc/binding.cpp`.
use std::ffi::{c_int, c_void, CString};
use std::sync::{Mutex, MutexGuard};

use tch::{Device, Tensor};
use torch_sys::C_tensor;

use crate::error::{DistError, Result};
use crate::ffi;
use crate::rendezvous::Rendezvous;

/// Tensors of one dtype are flattened into buckets of this many bytes at most (one collective each):
/// few collectives for many small gradients, a bounded extra copy for large ones.
pub const DEFAULT_BUCKET_BYTES: usize = 64 << 20;

/// Which c10d backend carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo over TCP: CPU tensors.
    Gloo,
    /// NCCL: CUDA tensors (the GPU is the tensors' device; bind it with `LOCAL_RANK` first).
    Nccl,
}

impl Backend {
    /// Gloo for the CPU, NCCL for a CUDA device.
    pub fn for_device(device: Device) -> Self {
        match device {
            Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }

    /// Whether this build of the binding has the backend (NCCL needs a CUDA libtorch and the NCCL
    /// headers at build time).
    pub fn is_available(self) -> bool {
        match self {
            Backend::Gloo => true,
            // SAFETY: a constant query.
            Backend::Nccl => (unsafe { ffi::alp_dist_has_nccl() }) != 0,
        }
    }
}

/// One rank's membership in a c10d process group. Every rank must call the same collectives in the
/// same order with tensors of the same shapes and dtypes; each call waits at most the rendezvous
/// timeout and returns an error (never aborts) when a peer died, hung or disagreed.
pub struct ProcessGroup {
    raw: *mut c_void,
    rank: usize,
    world_size: usize,
    local_rank: usize,
    backend: Backend,
    bucket_bytes: usize,
    /// Held through every collective: calls from several threads are serialized (each still has to
    /// come in the same order on every rank).
    lock: Mutex<()>,
}

// SAFETY: c10d's backends may be driven from any thread, and `lock` serializes the calls.
unsafe impl Send for ProcessGroup {}
// SAFETY: as above; the other fields are plain values.
unsafe impl Sync for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("backend", &self.backend)
            .finish()
    }
}

impl ProcessGroup {
    /// Joins the group: rank 0 starts the TCPStore at `master_addr:master_port`, the others connect
    /// to it; returns once all `world_size` ranks are there, or fails after the timeout.
    pub fn new(rendezvous: Rendezvous, backend: Backend) -> Result<Self> {
        rendezvous.validate().map_err(DistError::Rendezvous)?;
        let init_error = |message: String| DistError::Init {
            rank: rendezvous.rank,
            world_size: rendezvous.world_size,
            addr: rendezvous.addr(),
            message,
        };
        let host = CString::new(rendezvous.master_addr.as_str())
            .map_err(|_| DistError::Rendezvous("MASTER_ADDR contains a NUL byte".into()))?;
        let mut raw: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid C string and out pointer; the binding catches every C++ exception.
        let err = unsafe {
            ffi::alp_dist_new(
                host.as_ptr(),
                rendezvous.master_port,
                rendezvous.rank as c_int,
                rendezvous.world_size as c_int,
                rendezvous.timeout.as_millis().min(i64::MAX as u128) as i64,
                matches!(backend, Backend::Nccl) as c_int,
                rendezvous.is_loopback() as c_int,
                rendezvous.hosts_store() as c_int,
                &mut raw,
            )
        };
        ffi::take_error(err).map_err(init_error)?;
        Ok(Self {
            raw,
            rank: rendezvous.rank,
            world_size: rendezvous.world_size,
            local_rank: rendezvous.local_rank,
            backend,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            lock: Mutex::new(()),
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The backend carrying the collectives.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Sets the size of the flattening buckets of [`ProcessGroup::all_reduce_sum`] and
    /// [`ProcessGroup::broadcast`] (the same on every rank).
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Self {
        self.bucket_bytes = bytes.max(1);
        self
    }

    fn collective_error(&self, op: &'static str) -> impl Fn(String) -> DistError + '_ {
        move |message| DistError::Collective {
            op,
            rank: self.rank,
            world_size: self.world_size,
            message,
        }
    }

    /// Replaces each tensor, in place, by its element-wise sum over all ranks. Tensors may have any
    /// shapes and dtypes (they are flattened per dtype into buckets); they must be defined and on the
    /// backend's device.
    pub fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<()> {
        let ptrs = self.pointers("all_reduce_sum", tensors)?;
        if ptrs.is_empty() {
            return Ok(());
        }
        let _guard = self.serialize();
        // SAFETY: the pointers are live `at::Tensor*` borrowed for the call.
        let err = unsafe {
            ffi::alp_dist_all_reduce_sum(self.raw, ptrs.as_ptr(), ptrs.len(), self.bucket())
        };
        ffi::take_error(err).map_err(self.collective_error("all_reduce_sum"))
    }

    /// Overwrites each tensor, in place, with rank `root`'s.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        if root >= self.world_size {
            return Err(DistError::Argument {
                op: "broadcast",
                message: format!("root {root} is not a rank of {}", self.world_size),
            });
        }
        let ptrs = self.pointers("broadcast", tensors)?;
        if ptrs.is_empty() {
            return Ok(());
        }
        let _guard = self.serialize();
        // SAFETY: as in all_reduce_sum.
        let err = unsafe {
            ffi::alp_dist_broadcast(
                self.raw,
                ptrs.as_ptr(),
                ptrs.len(),
                root as c_int,
                self.bucket(),
            )
        };
        ffi::take_error(err).map_err(self.collective_error("broadcast"))
    }

    /// Every rank's `bytes`, in rank order; lengths may differ between ranks (they are gathered
    /// first, then the buffers padded to the longest).
    pub fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let device = self.device();
        let len = Tensor::from_slice(&[bytes.len() as i64]).to_device(device);
        let lens = self.all_gather("all_gather_bytes", &len)?;
        let lens: Vec<usize> = lens
            .iter()
            .map(|t| i64::try_from(t).map(|n| n as usize))
            .collect::<std::result::Result<_, _>>()?;
        let longest = lens.iter().copied().max().unwrap_or(0);
        if longest == 0 {
            return Ok(vec![Vec::new(); self.world_size]);
        }
        let mut padded = bytes.to_vec();
        padded.resize(longest, 0);
        let mine = Tensor::from_slice(&padded).to_device(device);
        let all = self.all_gather("all_gather_bytes", &mine)?;
        all.iter()
            .zip(&lens)
            .map(|(t, &n)| {
                Ok(Vec::<u8>::try_from(
                    t.to_device(Device::Cpu).narrow(0, 0, n as i64),
                )?)
            })
            .collect()
    }

    /// Returns once every rank called it (or fails after the timeout).
    pub fn barrier(&self) -> Result<()> {
        let _guard = self.serialize();
        // SAFETY: a live group.
        let err = unsafe { ffi::alp_dist_barrier(self.raw) };
        ffi::take_error(err).map_err(self.collective_error("barrier"))
    }

    /// Every rank's `input` (same shape and dtype on every rank), in rank order.
    fn all_gather(&self, op: &'static str, input: &Tensor) -> Result<Vec<Tensor>> {
        let outputs: Vec<Tensor> = (0..self.world_size).map(|_| input.empty_like()).collect();
        let ptrs = self.pointers(op, &outputs)?;
        let _guard = self.serialize();
        // SAFETY: as in all_reduce_sum; `input` lives for the call.
        let err = unsafe {
            ffi::alp_dist_all_gather(
                self.raw,
                input.as_ptr() as *mut C_tensor,
                ptrs.as_ptr(),
                ptrs.len(),
            )
        };
        ffi::take_error(err).map_err(self.collective_error(op))?;
        Ok(outputs)
    }

    fn pointers(&self, op: &'static str, tensors: &[Tensor]) -> Result<Vec<*mut C_tensor>> {
        tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if !t.defined() {
                    return Err(DistError::Argument {
                        op,
                        message: format!("tensor {i} is undefined"),
                    });
                }
                Ok(t.as_ptr() as *mut C_tensor)
            })
            .collect()
    }

    fn serialize(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bucket(&self) -> i64 {
        self.bucket_bytes.min(i64::MAX as usize) as i64
    }

    /// Where this group's tensors live: the CPU for Gloo, the
    /// local rank's GPU for NCCL.
    pub fn device(&self) -> Device {
        match self.backend {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl => Device::Cuda(self.local_rank),
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by alp_dist_new, dropped once.
        unsafe { ffi::alp_dist_free(self.raw) };
    }
}
