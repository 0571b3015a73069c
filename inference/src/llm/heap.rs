//! Keeps freed memory in the process for reuse, so that the large buffers of every step (a
//! prefill's activations, matmul outputs, logits) do not fault their pages in again.
//!
//! glibc's allocator serves blocks above a sliding threshold (up to 32 MiB) with `mmap` and
//! gives the top of the heap back to the kernel once 128 KiB or more of it are free. An engine
//! step allocates and frees megabytes in a pattern that repeats every step, so each step paid
//! for thousands of page faults: measured on the 2-core EPYC, a model's worth of matmuls over
//! 256 prompt tokens took 159 ms instead of 90 ms (a throwaway timing loop over random weights
//! of SmolLM2-135M's shapes, at 10ee982). Serving from the heap and never trimming
//! it keeps the step's working set resident; the cost is that the process holds on to its
//! peak heap.

/// Applies the policy once per process; later calls do nothing. Without glibc (other C
/// libraries, other systems) it does nothing.
pub fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(apply);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(
    unsafe_code,
    reason = "mallopt is glibc's documented tuning call; it takes integers"
)]
fn apply() {
    /// glibc's largest mmap threshold on 64-bit systems.
    const MMAP_THRESHOLD: i32 = 32 << 20;
    /// Freed top-of-heap memory kept before trimming.
    const TRIM_THRESHOLD: i32 = 1 << 30;
    // SAFETY: `mallopt` changes allocator parameters; it is safe to call at any time.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    };
    if !ok {
        tracing::warn!("could not tune the allocator: engine steps may fault pages in");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() {}
