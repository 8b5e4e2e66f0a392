// matmul_int_mx.wgsl: out[t, r] = xs[t] * sum_g (d[r,g] * ... ) with int8
// activation codes (act_quant) against Mixed weight planes (SliM-LLM: a bit
// width from 1 to 8 per column group, w = d * q + m per (row, group)): per
// group an exact i32 dot over all its chunks (dot4I8Packed) and the lane
// sum of x, then one f32 epilogue with the group's scale and centred min
// (lib/imatmul.wgsl has the math). Uses lib/mxcodes.wgsl (chunks, scales,
// the class table) and lib/imatmul.wgsl.
//
// Same walk as the float kernels (lib/mxmatmul.wgsl): groups by class
// (width, and vector or scalar loads), each class's code specialised for
// its width, the mat-vec keeping R rows per invocation and the tiled kernel
// TA tokens x TB rows.

@group(0) @binding(3) var<storage, read> codes: array<u32>;
@group(0) @binding(7) var<storage, read> table: array<u32>;
@group(0) @binding(8) var<storage, read> codes4: array<vec4<u32>>;

// A chunk's 32 codes as int8 lanes: the segments widened and combined
// (lowest bits first, as stored), or 8-bit codes flipped to q - 128.
fn chunk_lanes(ch: Chunk, bits: u32) -> Lanes {
    if bits == 8u {
        let flip = vec4<u32>(0x80808080u);
        return Lanes(ch.a ^ flip, ch.b ^ flip);
    }
    var w = Lanes(vec4<u32>(0u), vec4<u32>(0u));
    var shift = 0u;
    if (bits & 4u) != 0u {
        w = nib_lanes(ch.a);
        shift = 4u;
    }
    if (bits & 2u) != 0u {
        let l = crumb_lanes(ch.c);
        w.a |= l.a << vec4<u32>(shift);
        w.b |= l.b << vec4<u32>(shift);
        shift += 2u;
    }
    if (bits & 1u) != 0u {
        let l = bit_lanes(ch.d);
        w.a |= l.a << vec4<u32>(shift);
        w.b |= l.b << vec4<u32>(shift);
    }
    return w;
}

// The integer zero point the epilogue subtracts (8-bit codes are centred
// already) and the one folded into the min: 2^(bits-1).
fn zero_int(bits: u32) -> i32 {
    return select(1 << (bits - 1u), 0, bits == 8u);
}
fn zero_f(bits: u32) -> f32 {
    return f32(1u << (bits - 1u));
}

// ---------------------------------------------------------------------------
// matvec: one token; invocation i computes rows (wg * WG + i) * R .. + R.

override R: u32 = 4u;

// What every group of a matvec call shares.
struct MvRows {
    r: vec4<u32>,
    live: bool,
}

// The groups of one class; `bits` and `vec` are literals at every call, so
// the width and path branches fold when the pipeline is compiled.
fn mv_class(acc: ptr<function, vec4<f32>>, st: MvRows, bits: u32, vec: bool) {
    let cls = 2u * (bits - 1u) + select(1u, 0u, vec);
    let i0 = table[cls];
    let i1 = select(i0, table[cls + 1u], st.live);
    for (var i = i0; i < i1; i++) {
        let base = table[CLASS_WORDS + 2u * i];
        let e = table[CLASS_WORDS + 2u * i + 1u];
        let g = e & 0xfffffu;
        let nch = e >> 20u;
        let gw = bits * nch;
        let xg = g * (p.group / 32u);
        var dq = vec4<i32>(0);
        var xs = 0;
        for (var s = 0u; s < nch; s += 4u) {
            let off = s * bits;
            if vec {
                for (var c = 0u; c < 4u; c++) {
                    let x = x_lanes(p.x_row, xg + s + c);
                    xs += lane_sum(x);
                    dq.x += idot(chunk_lanes(vload_chunk((base + st.r.x * gw + off) / 4u, c, bits), bits), x);
                    if R > 1u {
                        dq.y += idot(chunk_lanes(vload_chunk((base + st.r.y * gw + off) / 4u, c, bits), bits), x);
                    }
                    if R > 2u {
                        dq.z += idot(chunk_lanes(vload_chunk((base + st.r.z * gw + off) / 4u, c, bits), bits), x);
                        dq.w += idot(chunk_lanes(vload_chunk((base + st.r.w * gw + off) / 4u, c, bits), bits), x);
                    }
                }
            } else {
                let k = min(4u, nch - s);
                for (var c = 0u; c < k; c++) {
                    let x = x_lanes(p.x_row, xg + s + c);
                    xs += lane_sum(x);
                    dq.x += idot(chunk_lanes(load_chunk(base + st.r.x * gw + off, k, c, bits), bits), x);
                    if R > 1u {
                        dq.y += idot(chunk_lanes(load_chunk(base + st.r.y * gw + off, k, c, bits), bits), x);
                    }
                    if R > 2u {
                        dq.z += idot(chunk_lanes(load_chunk(base + st.r.z * gw + off, k, c, bits), bits), x);
                        dq.w += idot(chunk_lanes(load_chunk(base + st.r.w * gw + off, k, c, bits), bits), x);
                    }
                }
            }
        }
        let z = zero_int(bits);
        let si = st.r * p.n_groups + vec4<u32>(g);
        let d0 = scale_at(si.x);
        (*acc).x += group_out(dq.x, xs, z, d0, fma(zero_f(bits), d0, min_at(si.x)));
        if R > 1u {
            let d1 = scale_at(si.y);
            (*acc).y += group_out(dq.y, xs, z, d1, fma(zero_f(bits), d1, min_at(si.y)));
        }
        if R > 2u {
            let d2 = scale_at(si.z);
            let d3 = scale_at(si.w);
            (*acc).z += group_out(dq.z, xs, z, d2, fma(zero_f(bits), d2, min_at(si.z)));
            (*acc).w += group_out(dq.w, xs, z, d3, fma(zero_f(bits), d3, min_at(si.w)));
        }
    }
}

fn matvec(wg: u32, lid: u32) {
    let row0 = (wg * WG + lid) * R;
    let last = p.rows - 1u;
    var st: MvRows;
    st.r = min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
    st.live = row0 < p.rows;
    var acc = vec4<f32>(0.0);
    mv_classes(&acc, st);
    store_rows(row0, xscale[p.x_row] * acc);
}

// ---------------------------------------------------------------------------
// Tiled matmul: a workgroup computes TA tokens x (WG * TB) rows; invocation i
// keeps TB rows x TA tokens of accumulators, widens each chunk of its rows
// once for all TA tokens and sums a group's dots in i32 before its epilogue.

const TA: u32 = 8u;
const TB: u32 = 4u;

// acc[2r] / dq[2r] hold row r with tokens 0..3, [2r + 1] with tokens 4..7.
alias Acc = array<vec4<f32>, 8>;
alias IAcc = array<vec4<i32>, 8>;
alias Tokens = array<Lanes, TA>;

// One chunk of the group in progress: four rows' lanes against TA tokens.
struct GroupTile {
    dq: IAcc,
    xs0: vec4<i32>,
    xs1: vec4<i32>,
}

fn row_dots(w: Lanes, xt: ptr<function, Tokens>, t0: u32) -> vec4<i32> {
    return vec4<i32>(idot(w, (*xt)[t0]), idot(w, (*xt)[t0 + 1u]), idot(w, (*xt)[t0 + 2u]),
                     idot(w, (*xt)[t0 + 3u]));
}

fn mx_chunk(gt: ptr<function, GroupTile>, w0: Lanes, w1: Lanes, w2: Lanes, w3: Lanes, blk: u32,
            tk: array<u32, TA>) {
    var xt: Tokens;
    xt[0] = x_lanes(tk[0], blk);
    xt[1] = x_lanes(tk[1], blk);
    xt[2] = x_lanes(tk[2], blk);
    xt[3] = x_lanes(tk[3], blk);
    xt[4] = x_lanes(tk[4], blk);
    xt[5] = x_lanes(tk[5], blk);
    xt[6] = x_lanes(tk[6], blk);
    xt[7] = x_lanes(tk[7], blk);
    (*gt).xs0 += vec4<i32>(lane_sum(xt[0]), lane_sum(xt[1]), lane_sum(xt[2]), lane_sum(xt[3]));
    (*gt).xs1 += vec4<i32>(lane_sum(xt[4]), lane_sum(xt[5]), lane_sum(xt[6]), lane_sum(xt[7]));
    (*gt).dq[0] += row_dots(w0, &xt, 0u);
    (*gt).dq[1] += row_dots(w0, &xt, 4u);
    (*gt).dq[2] += row_dots(w1, &xt, 0u);
    (*gt).dq[3] += row_dots(w1, &xt, 4u);
    (*gt).dq[4] += row_dots(w2, &xt, 0u);
    (*gt).dq[5] += row_dots(w2, &xt, 4u);
    (*gt).dq[6] += row_dots(w3, &xt, 0u);
    (*gt).dq[7] += row_dots(w3, &xt, 4u);
}

// What every group of a tiled call shares.
struct MmTile {
    r: vec4<u32>,
    tk: array<u32, TA>,
    live: bool,
}

// The groups of one class (bits and vec literals, as in mv_class).
fn mm_class(acc: ptr<function, Acc>, st: ptr<function, MmTile>, bits: u32, vec: bool) {
    let cls = 2u * (bits - 1u) + select(1u, 0u, vec);
    let i0 = table[cls];
    let i1 = select(i0, table[cls + 1u], (*st).live);
    let tk = (*st).tk;
    let rr = (*st).r;
    for (var i = i0; i < i1; i++) {
        let base = table[CLASS_WORDS + 2u * i];
        let e = table[CLASS_WORDS + 2u * i + 1u];
        let g = e & 0xfffffu;
        let nch = e >> 20u;
        let gw = bits * nch;
        let xg = g * (p.group / 32u);
        var gt: GroupTile;
        for (var s = 0u; s < nch; s += 4u) {
            let o = vec4<u32>(base) + rr * gw + vec4<u32>(s * bits);
            if vec {
                let b4 = o / 4u;
                for (var c = 0u; c < 4u; c++) {
                    mx_chunk(&gt, chunk_lanes(vload_chunk(b4.x, c, bits), bits),
                             chunk_lanes(vload_chunk(b4.y, c, bits), bits),
                             chunk_lanes(vload_chunk(b4.z, c, bits), bits),
                             chunk_lanes(vload_chunk(b4.w, c, bits), bits), xg + s + c, tk);
                }
            } else {
                let k = min(4u, nch - s);
                for (var c = 0u; c < k; c++) {
                    mx_chunk(&gt, chunk_lanes(load_chunk(o.x, k, c, bits), bits),
                             chunk_lanes(load_chunk(o.y, k, c, bits), bits),
                             chunk_lanes(load_chunk(o.z, k, c, bits), bits),
                             chunk_lanes(load_chunk(o.w, k, c, bits), bits), xg + s + c, tk);
                }
            }
        }
        let z = zero_int(bits);
        let zf = zero_f(bits);
        let si = rr * p.n_groups + vec4<u32>(g);
        let d = vec4<f32>(scale_at(si.x), scale_at(si.y), scale_at(si.z), scale_at(si.w));
        let mc = fma(vec4<f32>(zf), d, vec4<f32>(min_at(si.x), min_at(si.y), min_at(si.z), min_at(si.w)));
        (*acc)[0] += group_out4(gt.dq[0], gt.xs0, z, d.x, mc.x);
        (*acc)[1] += group_out4(gt.dq[1], gt.xs1, z, d.x, mc.x);
        (*acc)[2] += group_out4(gt.dq[2], gt.xs0, z, d.y, mc.y);
        (*acc)[3] += group_out4(gt.dq[3], gt.xs1, z, d.y, mc.y);
        (*acc)[4] += group_out4(gt.dq[4], gt.xs0, z, d.z, mc.z);
        (*acc)[5] += group_out4(gt.dq[5], gt.xs1, z, d.z, mc.z);
        (*acc)[6] += group_out4(gt.dq[6], gt.xs0, z, d.w, mc.w);
        (*acc)[7] += group_out4(gt.dq[7], gt.xs1, z, d.w, mc.w);
    }
}

fn matmul(wg: u32, lid: u32) {
    let t0 = (wg / p.row_tiles) * TA;
    let r0 = ((wg % p.row_tiles) * WG + lid) * TB;
    let last = p.rows - 1u;
    var st: MmTile;
    st.r = min(vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
    // Tokens past the step's end repeat the last one; never written.
    let last_t = p.n_tokens - 1u;
    for (var a = 0u; a < TA; a++) {
        st.tk[a] = min(t0 + a, last_t);
    }
    st.live = r0 < p.rows;
    var acc: Acc;
    mm_classes(&acc, &st);
    store_tile(t0, r0, scale_tile(acc, t0));
}

// ---------------------------------------------------------------------------

@compute @workgroup_size(WG)
fn matvec_mixed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid);
}

@compute @workgroup_size(WG)
fn matmul_mixed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid);
}
