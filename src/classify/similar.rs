//! Cosine nearest neighbours over an embedding [`Index`](super::export::Index): brute-force
//! dot products of unit vectors, which at ResNet's 512–2048 dimensions and up to millions of
//! rows is memory-bound and needs no approximate index.
//!
//! The dot product is ours rather than a crate's: it is ten lines per instruction set, and
//! the binary is built for baseline x86-64, so it picks AVX2+FMA at run time.

use rayon::prelude::*;

use super::export::Index;

/// `a · b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were detected just above.
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

/// Eight running sums so that the loop vectorises (and pipelines) on any target.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: every load reads 8 floats below `n`, within both slices.
    unsafe {
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                s0,
            );
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                s1,
            );
            i += 16;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(s0, s1));
        lanes.iter().sum::<f32>() + dot_portable(&a[i..n], &b[i..n])
    }
}

/// One neighbour: its row in the index and its cosine similarity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbour {
    pub row: usize,
    pub similarity: f32,
}

/// The `k` rows most similar to `query` (unit length), best first; `skip` (the query's own
/// row, when it is in the index) is left out.
pub fn nearest(index: &Index, query: &[f32], k: usize, skip: Option<usize>) -> Vec<Neighbour> {
    let mut all: Vec<Neighbour> = index
        .rows
        .par_chunks(index.dim)
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(row, r)| Neighbour {
            row,
            similarity: dot(query, r),
        })
        .collect();
    let k = k.min(all.len());
    if k == 0 {
        return Vec::new();
    }
    all.select_nth_unstable_by(k - 1, |a, b| b.similarity.total_cmp(&a.similarity));
    all.truncate(k);
    all.sort_by(|a, b| b.similarity.total_cmp(&a.similarity).then(a.row.cmp(&b.row)));
    all
}

/// Every pair `(i, j)`, `i < j`, at or above `threshold`, most similar first.
pub fn duplicates(index: &Index, threshold: f32) -> Vec<(usize, usize, f32)> {
    let mut pairs: Vec<(usize, usize, f32)> = (0..index.len())
        .into_par_iter()
        .flat_map_iter(|i| {
            let a = index.row(i);
            ((i + 1)..index.len()).filter_map(move |j| {
                let s = dot(a, index.row(j));
                (s >= threshold).then_some((i, j, s))
            })
        })
        .collect();
    pairs.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::export::unit;

    fn index(rows: &[&[f32]]) -> Index {
        let dim = rows[0].len();
        let mut flat: Vec<f32> = rows.concat();
        for r in flat.chunks_exact_mut(dim) {
            unit(r);
        }
        Index {
            paths: (0..rows.len()).map(|i| format!("img{i}")).collect(),
            dim,
            rows: flat,
        }
    }

    #[test]
    fn dot_matches_a_plain_sum_at_every_length() {
        for n in [0, 1, 7, 8, 15, 16, 17, 33, 512, 2049] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 53 % 13) as f32) * 0.5 - 3.0).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() <= 1e-3 * want.abs().max(1.0), "n {n}");
            assert!(
                (dot_portable(&a, &b) as f64 - want).abs() <= 1e-3 * want.abs().max(1.0),
                "n {n}"
            );
        }
    }

    #[test]
    fn nearest_ranks_by_cosine_and_skips_the_query() {
        let idx = index(&[&[1.0, 0.0, 0.0], &[0.9, 0.1, 0.0], &[0.0, 1.0, 0.0], &[-1.0, 0.0, 0.0]]);
        let q = idx.row(0).to_vec();
        let n = nearest(&idx, &q, 2, Some(0));
        assert_eq!(n.iter().map(|n| n.row).collect::<Vec<_>>(), vec![1, 2]);
        assert!(n[0].similarity > 0.99 && n[1].similarity.abs() < 1e-6);
        assert_eq!(nearest(&idx, &q, 10, None).len(), 4);
        assert_eq!(nearest(&idx, &q, 10, None)[3].row, 3);
    }

    /// `cargo test --release -- --ignored similar_throughput --nocapture`: one query's time
    /// per million indexed vectors, at 512 and 2048 dimensions.
    #[test]
    #[ignore]
    fn similar_throughput() {
        for dim in [512, 2048] {
            let n = (200_000 * 512) / dim;
            let rows: Vec<f32> = (0..n * dim)
                .map(|i| ((i * 7919 % 1000) as f32) / 1000.0 - 0.5)
                .collect();
            let idx = Index {
                paths: vec![String::new(); n],
                dim,
                rows,
            };
            let q = idx.row(7).to_vec();
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                std::hint::black_box(nearest(&idx, &q, 5, None));
                best = best.min(t.elapsed().as_secs_f64());
            }
            let per_million = best * 1e6 / n as f64;
            println!(
                "dim {dim}: {n} vectors in {:.1} ms, {:.0} ms per million vectors ({:.1} GB/s)",
                best * 1e3,
                per_million * 1e3,
                (n * dim * 4) as f64 / best / 1e9
            );
        }
    }

    #[test]
    fn duplicates_lists_pairs_above_the_threshold_once() {
        let idx = index(&[&[1.0, 0.0], &[0.0, 1.0], &[1.0, 0.001], &[0.001, 1.0]]);
        let d = duplicates(&idx, 0.99);
        assert_eq!(d.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(), vec![(0, 2), (1, 3)]);
    }
}
