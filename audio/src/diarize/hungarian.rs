//! The Hungarian method (Kuhn–Munkres): a minimum-cost assignment of rows to columns.
//!
//! The shortest-augmenting-path form with row and column potentials, O(n² m) for `n ≤ m`;
//! a matrix with more rows than columns is solved transposed. Every row (of the smaller side)
//! is assigned; callers that want "no assignment" for some pairs give them a large cost and
//! drop those pairs afterwards.

/// Stands in for a cost that is not a finite number (NaN, infinite), so that the search
/// always terminates.
const NOT_FINITE: f64 = 1e12;

/// The assignment minimising the total cost of `costs` (rows of equal length; a value that
/// is not finite counts as a prohibitive cost): `(row, column)` pairs, one per row or per
/// column, whichever side is smaller, sorted by row.
pub(crate) fn assign(costs: &[Vec<f64>]) -> Vec<(usize, usize)> {
    let rows = costs.len();
    let cols = costs.first().map_or(0, Vec::len);
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    let cost = |r: usize, c: usize| {
        let v = costs[r][c];
        if v.is_finite() { v } else { NOT_FINITE }
    };
    if rows <= cols {
        solve(rows, cols, cost)
    } else {
        let mut pairs: Vec<(usize, usize)> = solve(cols, rows, |r, c| cost(c, r))
            .into_iter()
            .map(|(c, r)| (r, c))
            .collect();
        pairs.sort_unstable();
        pairs
    }
}

/// Solves an `n × m` problem with `n ≤ m`, reading costs through `cost(row, col)`.
fn solve(n: usize, m: usize, cost: impl Fn(usize, usize) -> f64) -> Vec<(usize, usize)> {
    // 1-based: index 0 is the virtual column the augmenting path starts from.
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; m + 1];
    // matched[col] = the row assigned to column `col` (0 = none).
    let mut matched = vec![0usize; m + 1];
    let mut way = vec![0usize; m + 1];
    for row in 1..=n {
        matched[0] = row;
        let mut col0 = 0;
        let mut min_to = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[col0] = true;
            let r = matched[col0];
            let mut delta = f64::INFINITY;
            let mut col1 = 0;
            for col in 1..=m {
                if used[col] {
                    continue;
                }
                let reduced = cost(r - 1, col - 1) - u[r] - v[col];
                if reduced < min_to[col] {
                    min_to[col] = reduced;
                    way[col] = col0;
                }
                if min_to[col] < delta {
                    delta = min_to[col];
                    col1 = col;
                }
            }
            for col in 0..=m {
                if used[col] {
                    u[matched[col]] += delta;
                    v[col] -= delta;
                } else {
                    min_to[col] -= delta;
                }
            }
            col0 = col1;
            if matched[col0] == 0 {
                break;
            }
        }
        // Flip the augmenting path.
        loop {
            let prev = way[col0];
            matched[col0] = matched[prev];
            col0 = prev;
            if col0 == 0 {
                break;
            }
        }
    }
    let mut pairs: Vec<(usize, usize)> = (1..=m)
        .filter(|&col| matched[col] != 0)
        .map(|col| (matched[col] - 1, col - 1))
        .collect();
    pairs.sort_unstable();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(costs: &[Vec<f64>], pairs: &[(usize, usize)]) -> f64 {
        pairs.iter().map(|&(r, c)| costs[r][c]).sum()
    }

    /// The optimum by trying every injective map of the smaller side.
    fn brute_force(costs: &[Vec<f64>]) -> f64 {
        fn go(costs: &[Vec<f64>], row: usize, used: &mut Vec<bool>) -> f64 {
            if row == costs.len() {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for col in 0..used.len() {
                if !used[col] {
                    used[col] = true;
                    best = best.min(costs[row][col] + go(costs, row + 1, used));
                    used[col] = false;
                }
            }
            best
        }
        let cols = costs[0].len();
        if costs.len() <= cols {
            go(costs, 0, &mut vec![false; cols])
        } else {
            let t: Vec<Vec<f64>> = (0..cols)
                .map(|c| costs.iter().map(|row| row[c]).collect())
                .collect();
            go(&t, 0, &mut vec![false; costs.len()])
        }
    }

    #[test]
    fn a_known_square_problem() {
        let costs = vec![
            vec![4.0, 1.0, 3.0],
            vec![2.0, 0.0, 5.0],
            vec![3.0, 2.0, 2.0],
        ];
        let pairs = assign(&costs);
        assert_eq!(pairs, [(0, 1), (1, 0), (2, 2)]);
        assert_eq!(total(&costs, &pairs), 5.0);
    }

    #[test]
    fn greedy_is_not_optimal_here_but_hungarian_is() {
        // Greedy takes (0, 0) = 1 and must then pay 100.
        let costs = vec![vec![1.0, 2.0], vec![2.0, 100.0]];
        assert_eq!(assign(&costs), [(0, 1), (1, 0)]);
    }

    #[test]
    fn rectangular_problems_assign_the_smaller_side() {
        let wide = vec![vec![5.0, 1.0, 9.0, 0.5], vec![0.2, 3.0, 9.0, 0.1]];
        let pairs = assign(&wide);
        assert_eq!(pairs.len(), 2);
        assert_eq!(total(&wide, &pairs), brute_force(&wide));
        let tall: Vec<Vec<f64>> = (0..4)
            .map(|c| wide.iter().map(|r| r[c]).collect())
            .collect();
        let pairs = assign(&tall);
        assert_eq!(pairs.len(), 2);
        assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(total(&tall, &pairs), brute_force(&tall));
        assert!(assign(&[]).is_empty());
        assert!(assign(&[vec![]]).is_empty());
    }

    #[test]
    fn costs_that_are_not_numbers_are_avoided_and_do_not_hang() {
        let costs = vec![vec![f64::NAN, 1.0], vec![2.0, f64::INFINITY]];
        assert_eq!(assign(&costs), [(0, 1), (1, 0)]);
        assert_eq!(assign(&[vec![f64::NAN, f64::NAN]]).len(), 1);
    }

    #[test]
    fn matches_brute_force_on_pseudo_random_matrices() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 1000) as f64 / 100.0
        };
        for n in 1..=5 {
            for m in 1..=5 {
                for _ in 0..20 {
                    let costs: Vec<Vec<f64>> =
                        (0..n).map(|_| (0..m).map(|_| next()).collect()).collect();
                    let pairs = assign(&costs);
                    assert_eq!(pairs.len(), n.min(m));
                    let mut rows: Vec<_> = pairs.iter().map(|p| p.0).collect();
                    let mut cols: Vec<_> = pairs.iter().map(|p| p.1).collect();
                    rows.dedup();
                    cols.sort_unstable();
                    cols.dedup();
                    assert_eq!((rows.len(), cols.len()), (n.min(m), n.min(m)));
                    let got = total(&costs, &pairs);
                    assert!((got - brute_force(&costs)).abs() < 1e-9, "{costs:?}");
                }
            }
        }
    }
}
