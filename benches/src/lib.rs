//! Helpers shared by the criterion benches in benches/benches/.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lamina_engine::graph::Step;
use lamina_engine::{Executor, Gpu};

/// The bench GPU (Lamina's adapter choice), named on stderr.
pub fn gpu() -> Arc<Gpu> {
    match Gpu::new() {
        Ok(g) => {
            eprintln!("bench GPU: {}", g.describe());
            g
        }
        Err(e) => panic!("benches need a GPU adapter: {e}"),
    }
}

/// Times `iters` runs of `step` (one submit each) until the device is idle,
/// for criterion's `iter_custom`.
pub fn time_steps(ex: &mut Executor, step: &Step, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        ex.run(step).expect("step");
    }
    ex.gpu().wait().expect("wait");
    start.elapsed()
}
