//! [`kmeans`]: Lloyd's k-means of small points (a key's sub-vector, 16-64
//! floats) with k-means++ seeding from a fixed seed: the same points give the
//! same centroids on every machine and run.

/// A deterministic generator (SplitMix64): seeding and sampling only.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes: the compiler turns this into vector code.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The index of the centroid nearest to `p` (ties: the lowest index), given each
/// centroid's squared norm: argmin ||c||^2 - 2 p.c.
pub fn nearest(p: &[f32], centroids: &[f32], norms: &[f32]) -> usize {
    let dim = p.len();
    let mut best = (f32::INFINITY, 0);
    for (c, (cent, n)) in centroids.chunks_exact(dim).zip(norms).enumerate() {
        let d = n - 2.0 * dot(p, cent);
        if d < best.0 {
            best = (d, c);
        }
    }
    best.1
}

fn norms(centroids: &[f32], dim: usize) -> Vec<f32> {
    centroids.chunks_exact(dim).map(|c| dot(c, c)).collect()
}

/// The result of [`kmeans`].
pub struct Clusters {
    /// `k` centroids of `dim` floats, row-major.
    pub centroids: Vec<f32>,
    /// The centroid of each point.
    pub assignment: Vec<u32>,
    /// Lloyd iterations run.
    pub iterations: usize,
    /// Whether the last iteration changed no assignment.
    pub converged: bool,
}

/// k-means of `points` (`n` rows of `dim` floats) into `k` centroids: k-means++
/// seeding from `seed`, then at most `max_iter` Lloyd iterations. A cluster left
/// empty is re-seeded with the point farthest from its centroid. With no more
/// points than centroids every point is a centroid (the rest repeat the first).
pub fn kmeans(points: &[f32], dim: usize, k: usize, max_iter: usize, seed: u64) -> Clusters {
    assert!(
        dim > 0 && k > 0 && points.len().is_multiple_of(dim),
        "k-means of {dim}-float points into {k}"
    );
    let n = points.len() / dim;
    let row = |i: usize| &points[i * dim..(i + 1) * dim];
    if n <= k {
        let mut centroids = points.to_vec();
        for _ in n..k {
            let first: Vec<f32> = if n > 0 { row(0).to_vec() } else { vec![0.0; dim] };
            centroids.extend_from_slice(&first);
        }
        return Clusters {
            centroids,
            assignment: (0..n as u32).collect(),
            iterations: 0,
            converged: true,
        };
    }
    // k-means++: each next centroid drawn in proportion to its squared distance
    // from the nearest one chosen so far.
    let mut rng = Rng::new(seed);
    let mut centroids = Vec::with_capacity(k * dim);
    centroids.extend_from_slice(row((rng.next_u64() % n as u64) as usize));
    let mut d2: Vec<f32> = (0..n).map(|i| dist2(row(i), &centroids[..dim])).collect();
    for _ in 1..k {
        let total: f64 = d2.iter().map(|&d| d as f64).sum();
        let pick = if total > 0.0 {
            let mut r = rng.unit() * total;
            let mut at = n - 1;
            for (i, &d) in d2.iter().enumerate() {
                r -= d as f64;
                if r < 0.0 {
                    at = i;
                    break;
                }
            }
            at
        } else {
            (rng.next_u64() % n as u64) as usize
        };
        let c = row(pick).to_vec();
        for (i, d) in d2.iter_mut().enumerate() {
            *d = d.min(dist2(row(i), &c));
        }
        centroids.extend_from_slice(&c);
    }
    let mut assignment = vec![u32::MAX; n];
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    let (mut iterations, mut converged) = (0, false);
    while iterations < max_iter {
        iterations += 1;
        let nr = norms(&centroids, dim);
        let mut changed = 0;
        for (i, a) in assignment.iter_mut().enumerate() {
            let c = nearest(row(i), &centroids, &nr) as u32;
            if *a != c {
                *a = c;
                changed += 1;
            }
        }
        if changed == 0 {
            converged = true;
            break;
        }
        sums.iter_mut().for_each(|s| *s = 0.0);
        counts.iter_mut().for_each(|c| *c = 0);
        for (i, &a) in assignment.iter().enumerate() {
            counts[a as usize] += 1;
            for (s, &x) in sums[a as usize * dim..(a as usize + 1) * dim].iter_mut().zip(row(i)) {
                *s += x as f64;
            }
        }
        for c in 0..k {
            if counts[c] == 0 {
                // Empty: the point farthest from its own centroid starts it over.
                let far = (0..n)
                    .max_by(|&x, &y| {
                        let dx = dist2(row(x), &centroids[assignment[x] as usize * dim..][..dim]);
                        let dy = dist2(row(y), &centroids[assignment[y] as usize * dim..][..dim]);
                        dx.total_cmp(&dy).then(y.cmp(&x))
                    })
                    .unwrap_or(0);
                centroids[c * dim..(c + 1) * dim].copy_from_slice(row(far));
                continue;
            }
            for (x, s) in centroids[c * dim..(c + 1) * dim].iter_mut().zip(&sums[c * dim..]) {
                *x = (*s / counts[c] as f64) as f32;
            }
        }
    }
    Clusters {
        centroids,
        assignment,
        iterations,
        converged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// After convergence every point is assigned to its nearest centroid (up
        /// to float rounding between the two distance forms).
        #[test]
        fn converged_points_sit_at_their_nearest_centroid(
            pts in proptest::collection::vec(-10.0f32..10.0, 3..240),
            k in 1usize..9,
            seed in any::<u64>(),
        ) {
            let dim = 3;
            let pts = &pts[..pts.len() / dim * dim];
            let c = kmeans(pts, dim, k, 200, seed);
            prop_assert_eq!(c.centroids.len(), k * dim);
            if c.converged {
                for (i, p) in pts.chunks_exact(dim).enumerate() {
                    let own = dist2(p, &c.centroids[c.assignment[i] as usize * dim..][..dim]);
                    let best = c.centroids.chunks_exact(dim).map(|x| dist2(p, x)).fold(f32::INFINITY, f32::min);
                    prop_assert!(own <= best + 1e-3 * (1.0 + best), "point {} at {} not {}", i, own, best);
                }
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_centroids_and_separated_groups_are_found() {
        // Three tight groups far apart.
        let mut rng = super::Rng::new(1);
        let mut pts = Vec::new();
        for g in [-50.0f32, 0.0, 50.0] {
            for _ in 0..100 {
                pts.extend([g + rng.unit() as f32, g - rng.unit() as f32]);
            }
        }
        let a = kmeans(&pts, 2, 3, 50, 7);
        let b = kmeans(&pts, 2, 3, 50, 7);
        assert_eq!(a.centroids, b.centroids);
        assert!(a.converged);
        let mut xs: Vec<f32> = a.centroids.chunks(2).map(|c| c[0]).collect();
        xs.sort_by(f32::total_cmp);
        for (x, g) in xs.iter().zip([-50.0, 0.0, 50.0]) {
            assert!((x - g).abs() < 1.0, "{xs:?}");
        }
        // Fewer points than centroids: each point is one.
        let few = kmeans(&pts[..4], 2, 3, 10, 0);
        assert_eq!(&few.centroids[..4], &pts[..4]);
    }
}
