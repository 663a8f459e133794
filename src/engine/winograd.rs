//! Winograd F(4×4, 3×3) for stride-1 3×3 convs (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016): each 4×4 block of output pixels comes from a 6×6 input
//! tile with 36 multiplies per channel pair instead of 144, so these convs do 2.25 instead of 9
//! multiply-adds per output value and channel pair.
//!
//! Per block of tiles: the input tiles are transformed (`V = Bᵀ d B`, 16 channels per vector),
//! the 36 products `M_ξ = V_ξ · U_ξ` run on the packed GEMM kernel (`U = G g Gᵀ` transformed and
//! packed once at load time), and the output transform (`Y = Aᵀ M A`) adds bias and residual,
//! applies ReLU and stores NHWC. Interpolation points 0, ±1, ±2, ±½ keep fp32 rounding within
//! the engine's 1e-4 budget (the tests compare against the direct conv and torchvision).

use std::cell::RefCell;

use rayon::prelude::*;

use super::aligned::AlignedVec;
use super::kernel::simd::{Simd, Vectorized};
use super::kernel::{self, with_simd, Epilogue, Isa, PackedB};
use super::types::{Ptr, Residual, Shape};

/// Output pixels per tile side, and input pixels per tile side.
const OUT: usize = 4;
const TILE: usize = 6;
/// Transformed positions ξ = 6·i + j.
const XI: usize = TILE * TILE;

/// `G` (6×3): the weight transform.
const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

thread_local! {
    /// Each thread's transformed inputs, packed rows and products for one block of tiles.
    static BUFS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A 3×3 stride-1 conv (BatchNorm folded) prepared for Winograd.
pub struct Winograd {
    isa: Isa,
    cin: usize,
    cout: usize,
    /// `U_ξ` as `[cin, cout]`, packed for the kernel.
    u: Vec<PackedB>,
    zeros: Vec<f32>,
}

impl Winograd {
    /// Whether a conv of this shape always runs here: a packed kernel, whole 16-channel vectors, and
    /// weights small enough that their 4× larger transform stays cheap to stream.
    /// `RESNET_WINOGRAD=0` turns it off.
    pub fn applies(cin: usize, cout: usize, isa: Isa) -> bool {
        Self::possible(cin, cout, isa) && cin * cout <= 256 * 256
    }

    /// Whether a conv of this shape may run here for large enough inputs (see
    /// [`Winograd::worth_it`]): up to 512×512 channels, whose 38 MB transform is only built the
    /// first time such an input comes.
    pub fn possible(cin: usize, cout: usize, isa: Isa) -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *ON.get_or_init(|| std::env::var("RESNET_WINOGRAD").map_or(true, |v| v != "0"));
        on && isa.packed() && cin.is_multiple_of(16) && cout.is_multiple_of(16) && cin * cout <= 512 * 512
    }

    /// For the wide convs: whether `xs` has enough 4×4 tiles (16, e.g. a batch of 4 at 7×7) to
    /// reuse the transformed weights; at batch 1 and 7×7 the direct GEMM is faster, as
    /// streaming the 4× larger weights costs more than the multiplies saved.
    pub fn worth_it(xs: Shape) -> bool {
        xs.n * xs.h.div_ceil(OUT) * xs.w.div_ceil(OUT) >= 16
    }

    /// From the folded weights as `[(ky, kx, cin), cout]`.
    pub fn new(w: &[f32], cin: usize, cout: usize, isa: Isa) -> Self {
        debug_assert_eq!(w.len(), 9 * cin * cout);
        let mut u = vec![vec![0f32; cin * cout]; XI];
        for ci in 0..cin {
            for co in 0..cout {
                let g = |ky: usize, kx: usize| w[((ky * 3 + kx) * cin + ci) * cout + co] as f64;
                // G g Gᵀ, in f64 so the transform adds no rounding of its own.
                let mut gg = [[0f64; 3]; TILE];
                for (i, row) in gg.iter_mut().enumerate() {
                    for (kx, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|ky| G[i][ky] * g(ky, kx)).sum();
                    }
                }
                for i in 0..TILE {
                    for j in 0..TILE {
                        let v: f64 = (0..3).map(|kx| gg[i][kx] * G[j][kx]).sum();
                        u[i * TILE + j][ci * cout + co] = v as f32;
                    }
                }
            }
        }
        Winograd {
            isa,
            cin,
            cout,
            u: u.iter().map(|m| PackedB::new(m, cin, cout, isa)).collect(),
            zeros: vec![0.0; cout],
        }
    }

    /// `out = act(conv(x) + bias [+ residual])`, same height and width as `x`. `scratch` holds
    /// the transformed batch between calls when the products are split by position.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        x: &[f32],
        xs: Shape,
        out: &mut [f32],
        bias: &[f32],
        residual: Residual<'_>,
        relu: bool,
        pool: &rayon::ThreadPool,
        scratch: &mut AlignedVec,
    ) {
        let (ty, tx) = (xs.h.div_ceil(OUT), xs.w.div_ceil(OUT));
        let tiles = xs.n * ty * tx;
        let threads = pool.current_num_threads().max(1);
        let (cin, cout, isa, mr) = (self.cin, self.cout, self.isa, self.isa.mr());
        let out = out.as_mut_ptr();
        let io = Io {
            x: Ptr(x.as_ptr()),
            xs,
            ty,
            tx,
            bias,
            residual: Ptr(residual.ptr(out)),
            relu,
            out: Ptr(out),
            cout,
        };
        // Inside each task: an Epilogue holds a raw pointer, so it is not shared.
        let ep = || Epilogue {
            bias: &self.zeros,
            residual: None,
            relu: false,
        };
        // Large transformed weights (over 1 MB) would be streamed once per block of tiles, so
        // the batch is transformed whole and the 36 products are split among the threads,
        // each reading its `U_ξ` once. Small ones stay in cache: then each thread takes whole
        // blocks of tiles (transform, products, inverse) whose buffers stay in L2.
        if XI * cin * cout > 1 << 18 {
            // Huge batches go through in parts, so the transformed tiles and products stay
            // within 64 MB (typical batches are one part).
            let part = ((1 << 24) / (XI * (cin + cout))).max(mr);
            let rows = part.min(tiles);
            let (vn, mn) = (XI * rows * cin, XI * rows * cout);
            scratch.grow(vn + mn);
            let (v, m) = scratch.split_at_mut(vn);
            let (vp, mp) = (Ptr(v.as_mut_ptr()), Ptr(m.as_mut_ptr()));
            for p0 in (0..tiles).step_by(part) {
                let nt = part.min(tiles - p0);
                let chunks = nt.div_ceil(threads * 4).max(1);
                let ranges = move |c: usize| p0 + c * chunks..p0 + ((c + 1) * chunks).min(nt);
                let packed = kernel::packed_len(nt, cin, mr);
                pool.install(|| {
                    (0..nt.div_ceil(chunks)).into_par_iter().for_each(|c| {
                        // SAFETY: each chunk writes its own rows of V.
                        unsafe { io.input(isa, ranges(c), vp.get(), nt, p0) }
                    });
                    (0..XI).into_par_iter().for_each(|xi| {
                        with_buf(packed, |pa| unsafe {
                            // SAFETY: each ξ reads its V_ξ and writes its own M_ξ.
                            kernel::pack_a_rows(isa, nt, vp.get().add(xi * nt * cin), cin, cin, pa);
                            let u = &self.u[xi];
                            let mx = mp.get().add(xi * nt * cout);
                            kernel::gemm_packed(nt, pa, u, mx, cout, ep(), 0..u.panels());
                        })
                    });
                    (0..nt.div_ceil(chunks)).into_par_iter().for_each(|c| {
                        // SAFETY: each chunk writes its own tiles' output pixels.
                        unsafe { io.output(isa, mp.get(), nt, p0, ranges(c)) }
                    });
                });
            }
            return;
        }
        // Blocks whose transformed tiles and products (36 × tiles × (cin + cout) floats) stay
        // within 1 MB of L2, at least one per thread and a multiple of the thread count.
        let cap = ((1 << 18) / (XI * (cin + cout))).clamp(mr, 4 * mr);
        let tasks = tiles.div_ceil(cap).max(threads).div_ceil(threads) * threads;
        let per = tiles.div_ceil(tasks);
        let packed = kernel::packed_len(per, cin, mr);
        let task = |t: usize| {
            let t0 = t * per;
            let t1 = (t0 + per).min(tiles);
            if t0 >= t1 {
                return;
            }
            let nt = t1 - t0;
            with_buf(XI * per * (cin + cout) + packed, |b| {
                let (v, rest) = b.split_at_mut(XI * per * cin);
                let (pa, m) = rest.split_at_mut(packed);
                // SAFETY: tiles t0..t1 read inside `x` and write only their own output pixels.
                unsafe {
                    io.input(isa, t0..t1, v.as_mut_ptr(), per, t0);
                    for (xi, u) in self.u.iter().enumerate() {
                        kernel::pack_a_rows(isa, nt, v.as_ptr().add(xi * per * cin), cin, cin, pa);
                        let mx = m.as_mut_ptr().add(xi * per * cout);
                        kernel::gemm_packed(nt, pa, u, mx, cout, ep(), 0..u.panels());
                    }
                    io.output(isa, m.as_ptr(), per, t0, t0..t1);
                }
            })
        };
        pool.install(|| (0..tasks).into_par_iter().for_each(task));
    }
}

/// Runs `f` on this thread's buffer, grown to `len` floats.
fn with_buf<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    BUFS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < len {
            b.resize(len, 0.0);
        }
        f(&mut b[..len])
    })
}

/// A conv call's input, output and epilogue, shared by its tasks.
struct Io<'a> {
    x: Ptr<*const f32>,
    xs: Shape,
    /// Tiles down and across each image.
    ty: usize,
    tx: usize,
    bias: &'a [f32],
    residual: Ptr<Option<*const f32>>,
    relu: bool,
    out: Ptr<*mut f32>,
    cout: usize,
}

/// `Bᵀ d` for one column (or row) of six vectors.
#[inline(always)]
unsafe fn bt<S: Simd>(d: [S::V; 6]) -> [S::V; 6] {
    let (two, four, five) = (S::splat(2.0), S::splat(4.0), S::splat(5.0));
    // r0 = 4d0 - 5d2 + d4; r5 = 4d1 - 5d3 + d5
    let r0 = S::fnma(five, d[2], S::fma(four, d[0], d[4]));
    let r5 = S::fnma(five, d[3], S::fma(four, d[1], d[5]));
    // r1 = -4d1 - 4d2 + d3 + d4, r2 = 4d1 - 4d2 - d3 + d4
    let a = S::fnma(four, d[2], d[4]); // d4 - 4d2
    let b = S::fnma(four, d[1], d[3]); // d3 - 4d1
    let r1 = S::add(a, b);
    let r2 = S::sub(a, b);
    // r3 = -2d1 - d2 + 2d3 + d4, r4 = 2d1 - d2 - 2d3 + d4
    let c = S::sub(d[4], d[2]);
    let e = S::mul(two, S::sub(d[3], d[1]));
    let r3 = S::add(c, e);
    let r4 = S::sub(c, e);
    [r0, r1, r2, r3, r4, r5]
}

/// `Aᵀ m` for one column (or row) of six vectors.
#[inline(always)]
unsafe fn at<S: Simd>(m: [S::V; 6]) -> [S::V; 4] {
    let s12 = S::add(m[1], m[2]);
    let d12 = S::sub(m[1], m[2]);
    let s34 = S::add(m[3], m[4]);
    let d34 = S::sub(m[3], m[4]);
    [
        S::add(S::add(m[0], s12), s34),
        S::fma(S::splat(2.0), d34, d12),
        S::fma(S::splat(4.0), s34, s12),
        S::add(S::fma(S::splat(8.0), d34, d12), m[5]),
    ]
}

/// Tile `t` as `(image, tile row, tile column)`.
fn tile_pos(t: usize, ty: usize, tx: usize) -> (usize, usize, usize) {
    (t / (ty * tx), (t % (ty * tx)) / tx, t % tx)
}

impl Io<'_> {
    /// [`InputTiles`] for tiles `range` on `isa`.
    ///
    /// # Safety
    /// As [`InputTiles`] says; `isa` is a packed kernel.
    unsafe fn input(&self, isa: Isa, range: std::ops::Range<usize>, v: *mut f32, stride: usize, base: usize) {
        let op = InputTiles {
            io: self,
            range,
            v,
            stride,
            base,
        };
        on(isa, op)
    }

    /// [`OutputTiles`] for tiles `range` on `isa`, from products `m` of this conv's `cout`.
    ///
    /// # Safety
    /// As [`OutputTiles`] says; `isa` is a packed kernel.
    unsafe fn output(&self, isa: Isa, m: *const f32, stride: usize, base: usize, range: std::ops::Range<usize>) {
        let op = OutputTiles {
            io: self,
            m,
            stride,
            base,
            cout: self.cout,
            range,
        };
        on(isa, op)
    }
}

/// Runs one of the transforms below with `isa`'s vectors.
///
/// # Safety
/// `isa` is a packed kernel, and `op`'s own contract holds.
unsafe fn on<Op: Vectorized<Output = ()>>(isa: Isa, op: Op) {
    with_simd!(isa, s => s.vectorize(op), portable => unreachable!("Winograd runs on packed kernels only"))
}

/// `V_ξ[t - base][c]` for tiles `range`: row stride `cin`, one `stride × cin` matrix per ξ.
/// Tiles `range` read inside `io.x`, and `v` holds their rows.
struct InputTiles<'a, 'b> {
    io: &'a Io<'b>,
    range: std::ops::Range<usize>,
    v: *mut f32,
    stride: usize,
    base: usize,
}

impl Vectorized for InputTiles<'_, '_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        let InputTiles {
            io,
            range,
            v,
            stride,
            base,
        } = self;
        let (x, xs) = (io.x.get(), io.xs);
        let cin = xs.c;
        for t in range {
            let (n, by, bx) = tile_pos(t, io.ty, io.tx);
            let (y0, x0) = ((by * OUT) as isize - 1, (bx * OUT) as isize - 1);
            // Input pixel (y0 + i, x0 + j), or None in the padding.
            let mut src = [[None; TILE]; TILE];
            for (i, row) in src.iter_mut().enumerate() {
                for (j, s) in row.iter_mut().enumerate() {
                    let (y, xx) = (y0 + i as isize, x0 + j as isize);
                    if y >= 0 && xx >= 0 && (y as usize) < xs.h && (xx as usize) < xs.w {
                        *s = Some(x.add(((n * xs.h + y as usize) * xs.w + xx as usize) * cin));
                    }
                }
            }
            for c in (0..cin).step_by(S::LANES) {
                // Columns first (Bᵀ d), then rows ((Bᵀ d) B).
                let mut cols = [[S::zero(); TILE]; TILE];
                for j in 0..TILE {
                    let d: [S::V; TILE] = std::array::from_fn(|i| src[i][j].map_or(S::zero(), |p| S::load(p.add(c))));
                    for (i, r) in bt::<S>(d).into_iter().enumerate() {
                        cols[i][j] = r;
                    }
                }
                for (i, row) in cols.iter().enumerate() {
                    for (j, r) in bt::<S>(*row).into_iter().enumerate() {
                        S::store(v.add(((i * TILE + j) * stride + (t - base)) * cin + c), r);
                    }
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` for tiles `range` (`M_ξ[t - base]` at row stride `cout`, `stride` rows per ξ),
/// plus bias (and residual), ReLU'd if asked, stored NHWC. `m` holds the tiles' products, and
/// they write only their own pixels.
struct OutputTiles<'a, 'b> {
    io: &'a Io<'b>,
    m: *const f32,
    stride: usize,
    base: usize,
    cout: usize,
    range: std::ops::Range<usize>,
}

impl Vectorized for OutputTiles<'_, '_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        let OutputTiles {
            io,
            m,
            stride,
            base,
            cout,
            range,
        } = self;
        let (xs, bias, out) = (io.xs, io.bias, io.out.get());
        let zero = S::zero();
        for t in range {
            let (n, by, bx) = tile_pos(t, io.ty, io.tx);
            let rows = (xs.h - by * OUT).min(OUT);
            let cols = (xs.w - bx * OUT).min(OUT);
            for c in (0..cout).step_by(S::LANES) {
                // Columns first (Aᵀ M), then rows ((Aᵀ M) A).
                let by_col: [[S::V; OUT]; TILE] = std::array::from_fn(|j| {
                    at::<S>(std::array::from_fn(|i| {
                        S::load(m.add(((i * TILE + j) * stride + (t - base)) * cout + c))
                    }))
                });
                let half: [[S::V; TILE]; OUT] = std::array::from_fn(|i| std::array::from_fn(|j| by_col[j][i]));
                let b = S::load(bias.as_ptr().add(c));
                for (i, row) in half.iter().enumerate().take(rows) {
                    let y = at::<S>(*row);
                    for (j, y) in y.iter().enumerate().take(cols) {
                        let at = ((n * xs.h + by * OUT + i) * xs.w + bx * OUT + j) * cout + c;
                        let mut o = S::add(*y, b);
                        if let Some(r) = io.residual.get() {
                            o = S::add(o, S::load(r.add(at)));
                        }
                        if io.relu {
                            o = S::max(o, zero);
                        }
                        S::store(out.add(at), o);
                    }
                }
            }
        }
    }
}
