//! Several sessions decoded in one step: one matmul per weight over all
//! their tokens (the weights read once for all of them), RoPE, the cache
//! write, attention and sampling per session over its own KV cache, with
//! its own position, penalty window and draw. The sessions must be forks
//! of one model ([`crate::llama::GpuModel::fork`]); the server's slots are.

use lamina_engine::Executor;
use lamina_engine::graph::{Sampling, Step};

use crate::llama::{BatchIo, TOKEN_STRIDE, build_batch_graph};
use crate::session::Session;
use crate::{ModelError, Result};

/// The compiled step of a fixed set of sessions (graph sequence `i` is
/// the `i`-th session given to [`BatchDecoder::new`], bound to its cache).
pub struct BatchDecoder {
    exec: Executor,
    io: BatchIo,
    n: usize,
}

impl BatchDecoder {
    pub fn new(sessions: &[&Session]) -> Result<Self> {
        let models: Vec<_> = sessions.iter().map(|s| &*s.model).collect();
        let (g, io) = build_batch_graph(&models)?;
        let exec = Executor::new(models[0].gpu.clone(), g)?;
        Ok(BatchDecoder {
            exec,
            io,
            n: sessions.len(),
        })
    }

    /// Sessions in the step.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The step's executor (for per-op profiles).
    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    pub fn executor_mut(&mut self) -> &mut Executor {
        &mut self.exec
    }

    /// Feeds `tokens[i]` to `sessions[i]` where it is `Some`, in one step,
    /// and returns the token each of those sessions samples next (`None`
    /// for the others, which the step leaves alone). `sessions` are the
    /// ones the decoder was made for, in the same order.
    pub fn step(
        &mut self,
        sessions: &mut [&mut Session],
        tokens: &[Option<u32>],
    ) -> Result<Vec<Option<u32>>> {
        if sessions.len() != self.n || tokens.len() != self.n {
            return Err(ModelError::Input(format!(
                "a batch step of {} sessions got {} sessions and {} tokens",
                self.n,
                sessions.len(),
                tokens.len()
            )));
        }
        let idle = Step {
            n_tokens: 0,
            pos: 0,
            sampling: Sampling::default(),
        };
        let mut ids = vec![0u32; self.n];
        let mut seqs = vec![idle; self.n];
        for (i, (s, t)) in sessions.iter_mut().zip(tokens).enumerate() {
            if let Some(t) = *t {
                let (step, words) = s.begin_token(t)?;
                ids[i] = t;
                seqs[i] = step;
                self.exec
                    .write(self.io.histories[i], 0, bytemuck::cast_slice(&words));
            }
        }
        self.exec.write(self.io.ids, 0, bytemuck::cast_slice(&ids));
        // The shared part (embedding, norms, matmuls) runs every row; idle
        // rows compute garbage nobody reads.
        let all = Step {
            n_tokens: self.n as u32,
            ..idle
        };
        let out =
            self.exec
                .run_read_seqs(&all, &seqs, self.io.tokens, TOKEN_STRIDE * self.n as u64)?;
        let mut next = vec![None; self.n];
        for (i, (s, t)) in sessions.iter_mut().zip(tokens).enumerate() {
            if t.is_some() {
                s.advance(1);
                let o = i * TOKEN_STRIDE as usize;
                next[i] = Some(u32::from_le_bytes([
                    out[o],
                    out[o + 1],
                    out[o + 2],
                    out[o + 3],
                ]));
            }
        }
        Ok(next)
    }
}
