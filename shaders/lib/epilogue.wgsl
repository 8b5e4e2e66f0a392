// epilogue.wgsl: where every matmul kernel puts a result. With ACC the
// result is added to what `out` already holds, so a residual add
// (x += o_proj(att), x += down_proj(act)) costs no dispatch of its own and
// no intermediate tensor; without it the result overwrites `out`. One
// invocation owns each output element, so the read-modify-write is plain.
// The includer declares `out` as a read_write array<f32>.

override ACC: bool = false;

fn put(o: u32, v: f32) {
    if ACC {
        out[o] += v;
    } else {
        out[o] = v;
    }
}
