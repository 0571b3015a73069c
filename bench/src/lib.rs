//! Benchmark tooling for the aigw gateway.
//!
//! The crate backs the `aigw-bench` binary and is split by role:
//!
//! - [`mock`]: a fast mock OpenAI-compatible upstream on bare hyper, with
//!   every response body precomputed at startup.
//! - [`client`]: one keep-alive HTTP/1.1 connection of the load generator
//!   (target parsing, connecting, sending a request and draining the answer).
//! - [`schedule`]: the arithmetic of open-loop (fixed-rate) scheduling.
//! - [`load`]: the load generator itself, closed-loop or open-loop workers
//!   recording latencies into an HDR histogram.
//! - [`stats`]: latency summaries (percentiles) and the load report type.
//! - [`procs`]: child processes of a scenario (guard that kills on drop,
//!   readiness detection, health polling).
//! - [`overhead`]: the gateway-overhead scenario (mock direct versus through
//!   the gateway).
//! - [`sse`]: incremental parsing of server-sent events and chat chunks.
//! - [`streams`]: concurrent streamed chat completions (one round of the
//!   engine benchmark) and their statistics.
//! - [`roofline`]: memory-bandwidth measurement and the decode roofline.
//! - [`routing`]: the routing scenario (ten deployments per alias, and a fallback from a
//!   failing deployment, measured by the gateway's own time).
//! - [`state`]: the shared-state scenario (cache hits in memory and on Redis, and what
//!   budgets + rate limits on Redis add).
//! - [`engine`]: the local-engine scenario (the gateway's in-process model
//!   under 1 to 64 streams, against llama.cpp and the roofline).
//! - [`batch`]: the engine's batched forward pass in-process (CPU or NVIDIA GPU), random
//!   weights of real architecture shapes, and a CPU-versus-device greedy check.
//! - [`results`]: provenance of a result (UTC date, machine, command line,
//!   commit) and writing the JSON / Markdown pair.
//! - [`report_md`]: the Markdown rendering of the results.
//!
//! [`build_runtime`] makes the tokio runtimes of both sides with an explicit
//! number of worker threads: the benchmark shares a small machine between the
//! load generator, the mock and the gateway, so every side defaults to one
//! thread and leaves the remaining cores to the gateway under test.

pub mod batch;
pub mod client;
pub mod engine;
pub mod load;
pub mod mock;
pub mod overhead;
pub mod procs;
pub mod report_md;
pub mod results;
pub mod roofline;
pub mod routing;
pub mod schedule;
pub mod sse;
pub mod state;
pub mod stats;
pub mod streams;

/// Builds a tokio runtime with `threads` worker threads.
///
/// One thread gives a current-thread runtime (no cross-thread wake-ups,
/// the leanest choice when cores are scarce); more give a multi-thread one.
pub fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}
