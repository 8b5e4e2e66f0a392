// lib/mmout.wgsl: where the matmul kernels write (engine/src/mmout.rs). A
// weight may hold several linear layers' rows concatenated (q, k, v; gate,
// up); each part's result is a matrix of its own in `out`: rows below
// p.o.part1 at element 0 ([tokens, part1]), rows part1 .. part2 at
// p.o.base1, the rest at p.o.base2 (one part: part1 = part2 = the weight's
// rows). With the ACC override the result is added to what `out` holds
// (the residual stream): an override, not a parameter, since llvmpipe would
// run a parameter's load of `out` masked at every store. The including kernel declares `p` (with `o: MmOut`,
// `rows`, `n_tokens`, `out_stride` = the weight's rows, `out_col` = the
// shard's first row) and `out: array<f32>`.

override ACC: bool = false;

struct MmOut {
    part1: u32,
    part2: u32,
    base1: u32,
    base2: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

// Element of `out` for token t and weight row r (the whole weight's).
fn out_index(t: u32, r: u32) -> u32 {
    let in1 = r >= p.o.part1;
    let in2 = r >= p.o.part2;
    let first = select(select(0u, p.o.part1, in1), p.o.part2, in2);
    let end = select(select(p.o.part1, p.o.part2, in1), p.out_stride, in2);
    let base = select(select(0u, p.o.base1, in1), p.o.base2, in2);
    return base + t * (end - first) + (r - first);
}

// Token t's value of the shard's row r; tokens past the step and rows past
// the shard are dropped.
fn store_out(t: u32, r: u32, v: f32) {
    if t < p.n_tokens && r < p.rows {
        let i = out_index(t, p.out_col + r);
        if ACC {
            out[i] = out[i] + v;
        } else {
            out[i] = v;
        }
    }
}

// Tokens t0 .. t0 + 4 of the shard's row r. The tiled kernels store their
// accumulators through these, a vec4 at a time with constant component
// indexes: a dynamically indexed accumulator array keeps the tile in memory
// on llvmpipe (and costs registers elsewhere).
fn store_tok4(t0: u32, r: u32, v: vec4<f32>) {
    store_out(t0, r, v.x);
    store_out(t0 + 1u, r, v.y);
    store_out(t0 + 2u, r, v.z);
    store_out(t0 + 3u, r, v.w);
}

// The mat-vecs' results: rows row0 .. row0 + R (the includer's R, 1, 2 or
// 4) of the one token.
fn store_rows(row0: u32, acc: vec4<f32>) {
    store_out(0u, row0, acc.x);
    if R > 1u {
        store_out(0u, row0 + 1u, acc.y);
    }
    if R > 2u {
        store_out(0u, row0 + 2u, acc.z);
        store_out(0u, row0 + 3u, acc.w);
    }
}

// The 8-token x 4-row tiles (qmatmul, mxmatmul, the integer kernels):
// acc[2r] holds row r0 + r's tokens t0 .. t0 + 3, acc[2r + 1] its t0 + 4 .. t0 + 7.
fn store_tile(t0: u32, r0: u32, acc: array<vec4<f32>, 8>) {
    store_tok4(t0, r0, acc[0]);
    store_tok4(t0 + 4u, r0, acc[1]);
    store_tok4(t0, r0 + 1u, acc[2]);
    store_tok4(t0 + 4u, r0 + 1u, acc[3]);
    store_tok4(t0, r0 + 2u, acc[4]);
    store_tok4(t0 + 4u, r0 + 2u, acc[5]);
    store_tok4(t0, r0 + 3u, acc[6]);
    store_tok4(t0 + 4u, r0 + 3u, acc[7]);
}

// The 4-token x 4-row tiles (qmatmul's matmul4): acc[r] holds row r0 + r's
// tokens t0 .. t0 + 3.
fn store_tile4(t0: u32, r0: u32, acc: array<vec4<f32>, 4>) {
    store_tok4(t0, r0, acc[0]);
    store_tok4(t0, r0 + 1u, acc[1]);
    store_tok4(t0, r0 + 2u, acc[2]);
    store_tok4(t0, r0 + 3u, acc[3]);
}
