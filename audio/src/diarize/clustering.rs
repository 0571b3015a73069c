//! Incremental speaker clustering: local speakers of each window → global speakers.
//!
//! diart's online clustering, in our own words. Each global speaker is a centroid (the sum of
//! the unit-length embeddings it absorbed, so its direction is their mean). For a window:
//! 1. the cosine distances between the window's active local speakers and the centroids;
//! 2. the Hungarian method pairs locals with centroids at the least total distance, where a
//!    pair further apart than `delta_new` is not allowed;
//! 3. a local speaker left without a partner starts a new global speaker while there are
//!    fewer than `max_speakers`; past the cap it joins the nearest centroid no other local
//!    speaker of the window took (and does not move it);
//! 4. a matched centroid moves towards its local speaker only when that speaker spoke for
//!    long enough in the window (`long`, decided by the caller from `rho_update`), so that a
//!    few frames of speech do not drag a centroid.

use super::hungarian;

/// Cost of a forbidden pair in the assignment; far above any cosine distance.
const FORBIDDEN: f64 = 1e6;

/// A local speaker of one window, as the clustering sees it.
#[derive(Debug, Clone)]
pub(crate) struct LocalSpeaker {
    /// Unit-length embedding.
    pub embedding: Vec<f32>,
    /// Spoke long enough in the window to update its centroid.
    pub long: bool,
}

/// The global speakers of one session.
#[derive(Debug, Clone)]
pub(crate) struct Clustering {
    centroids: Vec<Vec<f32>>,
    delta_new: f64,
    max_speakers: usize,
}

impl Clustering {
    pub(crate) fn new(delta_new: f64, max_speakers: usize) -> Self {
        Self {
            centroids: Vec::new(),
            delta_new,
            max_speakers: max_speakers.max(1),
        }
    }

    /// Global speakers so far.
    pub(crate) fn num_speakers(&self) -> usize {
        self.centroids.len()
    }

    /// The global speaker of each local speaker (`None` only when the cap left no centroid
    /// free for it in this window).
    pub(crate) fn identify(&mut self, locals: &[LocalSpeaker]) -> Vec<Option<usize>> {
        let mut assigned = vec![None; locals.len()];
        let distances: Vec<Vec<f64>> = locals
            .iter()
            .map(|l| {
                self.centroids
                    .iter()
                    .map(|c| cosine_distance(&l.embedding, c))
                    .collect()
            })
            .collect();
        let gated: Vec<Vec<f64>> = distances
            .iter()
            .map(|row| {
                row.iter()
                    .map(|&d| if d <= self.delta_new { d } else { FORBIDDEN })
                    .collect()
            })
            .collect();
        let mut taken = vec![false; self.centroids.len()];
        for (local, global) in hungarian::assign(&gated) {
            if gated[local][global] < FORBIDDEN {
                assigned[local] = Some(global);
                taken[global] = true;
            }
        }
        // Centroid updates for the matched, long-speaking locals.
        for (local, global) in assigned.iter().enumerate() {
            if let Some(global) = *global
                && locals[local].long
            {
                for (c, e) in self.centroids[global]
                    .iter_mut()
                    .zip(&locals[local].embedding)
                {
                    *c += e;
                }
            }
        }
        // New speakers, then the cap.
        let mut overflow = Vec::new();
        for (local, slot) in assigned.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            if self.centroids.len() < self.max_speakers {
                self.centroids.push(locals[local].embedding.clone());
                taken.push(true);
                *slot = Some(self.centroids.len() - 1);
            } else {
                overflow.push(local);
            }
        }
        if !overflow.is_empty() {
            let free: Vec<usize> = (0..self.centroids.len()).filter(|&g| !taken[g]).collect();
            let costs: Vec<Vec<f64>> = overflow
                .iter()
                .map(|&l| free.iter().map(|&g| distances[l][g]).collect())
                .collect();
            for (row, col) in hungarian::assign(&costs) {
                assigned[overflow[row]] = Some(free[col]);
            }
        }
        assigned
    }
}

/// `1 - cos(a, b)`, in [0, 2]; 1 when either vector is zero.
pub(crate) fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 1.0;
    }
    1.0 - dot / (na.sqrt() * nb.sqrt())
}

/// `v` scaled to unit length (unchanged when zero).
pub(crate) fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in v {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(embedding: &[f32], long: bool) -> LocalSpeaker {
        let mut embedding = embedding.to_vec();
        normalize(&mut embedding);
        LocalSpeaker { embedding, long }
    }

    #[test]
    fn distances() {
        assert!(cosine_distance(&[1.0, 0.0], &[2.0, 0.0]).abs() < 1e-12);
        assert!((cosine_distance(&[1.0, 0.0], &[0.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!((cosine_distance(&[1.0, 0.0], &[-1.0, 0.0]) - 2.0).abs() < 1e-12);
        assert_eq!(cosine_distance(&[0.0, 0.0], &[1.0, 0.0]), 1.0);
    }

    #[test]
    fn new_speakers_then_stable_identities() {
        let mut c = Clustering::new(0.5, 20);
        let a = [1.0, 0.0, 0.0];
        let b = [0.0, 1.0, 0.0];
        assert_eq!(
            c.identify(&[local(&a, true), local(&b, true)]),
            [Some(0), Some(1)]
        );
        // The same speakers in the other local order, slightly changed.
        assert_eq!(
            c.identify(&[local(&[0.1, 1.0, 0.0], true), local(&[1.0, 0.1, 0.0], true)]),
            [Some(1), Some(0)]
        );
        // A third voice far from both.
        assert_eq!(c.identify(&[local(&[0.0, 0.0, 1.0], false)]), [Some(2)]);
        assert_eq!(c.num_speakers(), 3);
    }

    #[test]
    fn two_locals_close_to_one_centroid_do_not_share_it() {
        let mut c = Clustering::new(0.5, 20);
        c.identify(&[local(&[1.0, 0.0], true)]);
        let got = c.identify(&[local(&[1.0, 0.1], true), local(&[1.0, 0.3], true)]);
        assert_eq!(got, [Some(0), Some(1)]);
    }

    #[test]
    fn only_long_speakers_move_centroids() {
        let mut c = Clustering::new(1.5, 20);
        c.identify(&[local(&[1.0, 0.0], true)]);
        let before = c.centroids[0].clone();
        c.identify(&[local(&[1.0, 1.0], false)]);
        assert_eq!(c.centroids[0], before);
        c.identify(&[local(&[1.0, 1.0], true)]);
        assert_ne!(c.centroids[0], before);
    }

    #[test]
    fn the_cap_assigns_to_the_nearest_free_centroid() {
        let mut c = Clustering::new(0.1, 2);
        c.identify(&[local(&[1.0, 0.0, 0.0], true), local(&[0.0, 1.0, 0.0], true)]);
        // Two new voices past the cap: each takes a different existing speaker.
        let got = c.identify(&[local(&[0.2, 1.0, 1.0], true), local(&[1.0, 0.2, 1.0], true)]);
        assert_eq!(got, [Some(1), Some(0)]);
        assert_eq!(c.num_speakers(), 2);
        // Three locals, two centroids: one is left out.
        let got = c.identify(&[
            local(&[1.0, 0.0, 0.0], true),
            local(&[0.0, 1.0, 0.0], true),
            local(&[0.0, 0.0, 1.0], true),
        ]);
        assert_eq!(got.iter().filter(|g| g.is_some()).count(), 2);
    }
}
