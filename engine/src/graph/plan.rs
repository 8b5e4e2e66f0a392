//! Memory plan: intermediate tensors whose lifetimes do not overlap share a
//! buffer. Greedy by size over shared objects (Pisarchyk & Lee, "Efficient
//! Memory Management for Deep Neural Net Inference", arXiv 2001.03288):
//! take tensors largest first; put each in the first existing buffer whose
//! tenants' lifetimes are all disjoint from its own, else open a new buffer.
//! A buffer's size is its largest tenant.

use super::{Graph, TensorKind};
use crate::Caps;

/// Where each tensor lives: `slot[t]` is the shared buffer of an
/// intermediate tensor, `None` for the others (they have buffers of their own).
#[derive(Debug, Clone)]
pub struct Plan {
    pub slot: Vec<Option<usize>>,
    pub slot_bytes: Vec<u64>,
    /// Sum of intermediate tensor sizes without sharing, for the log.
    pub naive_bytes: u64,
}

impl Plan {
    pub fn shared_bytes(&self) -> u64 {
        self.slot_bytes.iter().sum()
    }
}

/// First and last node index touching each tensor (a view's use counts
/// for the tensor it views).
pub fn lifetimes(g: &Graph, caps: &Caps) -> Vec<Option<(usize, usize)>> {
    let mut life: Vec<Option<(usize, usize)>> = vec![None; g.tensors.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for call in node.op.def().calls(caps) {
            for b in &call.bindings {
                let l = &mut life[g.root(b.tensor)];
                *l = Some(match *l {
                    None => (i, i),
                    Some((a, _)) => (a, i),
                });
            }
        }
    }
    life
}

pub fn plan(g: &Graph, caps: &Caps) -> Plan {
    let life = lifetimes(g, caps);
    let mut order: Vec<usize> = (0..g.tensors.len())
        .filter(|&t| matches!(g.tensors[t].kind, TensorKind::Intermediate) && life[t].is_some())
        .collect();
    order.sort_by_key(|&t| std::cmp::Reverse(g.tensors[t].bytes));
    let mut slot = vec![None; g.tensors.len()];
    let mut slot_bytes: Vec<u64> = Vec::new();
    let mut tenants: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut naive = 0;
    for t in order {
        let Some((a, b)) = life[t] else { continue };
        naive += g.tensors[t].bytes;
        let free = tenants
            .iter()
            .position(|ts| ts.iter().all(|&(c, d)| b < c || d < a));
        let s = match free {
            Some(s) => s,
            None => {
                tenants.push(Vec::new());
                slot_bytes.push(0);
                tenants.len() - 1
            }
        };
        tenants[s].push((a, b));
        slot_bytes[s] = slot_bytes[s].max(g.tensors[t].bytes);
        slot[t] = Some(s);
    }
    Plan {
        slot,
        slot_bytes,
        naive_bytes: naive,
    }
}
