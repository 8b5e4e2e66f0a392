//! The quantized cache's row formats ([`KvQuant`], with the ids the shaders
//! compare) and QJL's sketch sizes.

/// Tokens per flush group (and per QJL outlier group).
pub const GROUP: u32 = 32;
/// Most QJL outlier channels per group (one aux word of bytes).
pub const MAX_OUTLIERS: u32 = 4;

/// How one side (keys or values) of the quantized store holds a row.
///
/// Each format's [`id`](KvQuant::id) is what the shaders compare the `KF` /
/// `VF` overrides with, as the WGSL consts `KV_F16`, `KV_Q8`, ... of
/// lib/kvcache.wgsl (a contract test holds them equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvQuant {
    F16,
    Q8,
    Q4,
    Q2,
    /// Keys only: JL sign sketch.
    Qjl,
}

impl KvQuant {
    pub const ALL: [KvQuant; 5] = [
        KvQuant::F16,
        KvQuant::Q8,
        KvQuant::Q4,
        KvQuant::Q2,
        KvQuant::Qjl,
    ];
    /// The shader's format id (KF / VF; `KV_<NAME>` in lib/kvcache.wgsl).
    pub fn id(self) -> u32 {
        match self {
            KvQuant::F16 => 0,
            KvQuant::Q8 => 1,
            KvQuant::Q4 => 2,
            KvQuant::Q2 => 3,
            KvQuant::Qjl => 4,
        }
    }
    /// Bits per code of the integer formats.
    pub fn bits(self) -> Option<u32> {
        match self {
            KvQuant::Q8 => Some(8),
            KvQuant::Q4 => Some(4),
            KvQuant::Q2 => Some(2),
            KvQuant::F16 | KvQuant::Qjl => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            KvQuant::F16 => "f16",
            KvQuant::Q8 => "q8",
            KvQuant::Q4 => "q4",
            KvQuant::Q2 => "q2",
            KvQuant::Qjl => "qjl",
        }
    }
}

/// The QJL sketch sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QjlShape {
    /// Sketch rows for the inlier part (bits per key); a multiple of 32.
    pub m: u32,
    /// Sketch rows for the outlier part; a multiple of 32, at most m.
    pub m_out: u32,
    /// Outlier channels per group, at most [`MAX_OUTLIERS`].
    pub outliers: u32,
    /// The outlier channels as 8-bit codes with per-channel scales over the
    /// token group instead of a second sketch (then `m_out` is 0).
    pub outlier_q8: bool,
}
