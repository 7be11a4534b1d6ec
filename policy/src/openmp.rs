//! Running a closure on libtorch's own OpenMP team (`GOMP_parallel`, resolved at run time), so that
//! our CPU kernels (the few-rows GEMM, the rollout sampler) and libtorch's ops share the same threads
//! and never compete for the cores.
use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, u32, u32);
type OmpInt = unsafe extern "C" fn() -> i32;

struct Team {
    parallel: GompParallel,
    thread_num: OmpInt,
    num_threads: OmpInt,
}

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// libgomp's entry points, if the process has libgomp (libtorch's OpenMP runtime on Linux).
fn team() -> Option<&'static Team> {
    static TEAM: OnceLock<Option<Team>> = OnceLock::new();
    TEAM.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT (a null handle) only looks symbols up; each is
        // transmuted to the signature libgomp documents for it.
        unsafe {
            let find = |name: &CStr| {
                let p = dlsym(std::ptr::null_mut(), name.as_ptr());
                (!p.is_null()).then_some(p)
            };
            Some(Team {
                parallel: std::mem::transmute::<*mut c_void, GompParallel>(find(c"GOMP_parallel")?),
                thread_num: std::mem::transmute::<*mut c_void, OmpInt>(find(
                    c"omp_get_thread_num",
                )?),
                num_threads: std::mem::transmute::<*mut c_void, OmpInt>(find(
                    c"omp_get_num_threads",
                )?),
            })
        }
    })
    .as_ref()
}

struct Job<'a> {
    work: &'a (dyn Fn(usize, usize) + Sync),
    team: &'static Team,
}

extern "C" fn run(data: *mut c_void) {
    // SAFETY: `data` is the `Job` that `parallel` passed, alive until GOMP_parallel returns.
    let job = unsafe { &*(data as *const Job) };
    let (t, parts) = unsafe { ((job.team.thread_num)(), (job.team.num_threads)()) };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (job.work)(t.max(0) as usize, parts.max(1) as usize)
    }));
    if outcome.is_err() {
        // Unwinding into libgomp is undefined behaviour.
        std::process::abort();
    }
}

/// Calls `work(part, parts)` for every part, on up to `threads` threads of libtorch's OpenMP
/// team (the calling thread among them), or `work(0, 1)` here without libgomp or with one thread.
pub fn parallel(threads: usize, work: &(dyn Fn(usize, usize) + Sync)) {
    match team() {
        Some(team) if threads > 1 => {
            let job = Job { work, team };
            // SAFETY: GOMP_parallel runs `run` on the team and returns when all are done.
            unsafe { (team.parallel)(run, &job as *const Job as *mut c_void, threads as u32, 0) };
        }
        _ => work(0, 1),
    }
}
