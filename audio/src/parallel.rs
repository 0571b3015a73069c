//! Coarse-grained parallelism for the diarisation models: a few scoped threads for a few
//! large, independent pieces of work (speakers, LSTM directions, row blocks of a
//! convolution), so that a step can use both cores of a small machine without candle's
//! fine-grained thread pool.

/// `f` over `items`, in order, on up to `threads` threads (the caller's among them): item `i`
/// runs on thread `i % threads`.
pub(crate) fn parallel_map<T: Sync, R: Send, E: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let share = |first: usize| -> Result<Vec<R>, E> {
        items.iter().skip(first).step_by(threads).map(&f).collect()
    };
    let mut shares = std::thread::scope(|scope| {
        let workers: Vec<_> = (1..threads)
            .map(|first| scope.spawn(move || share(first)))
            .collect();
        let mut shares = vec![share(0)];
        shares.extend(workers.into_iter().map(|worker| {
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }));
        shares
    })
    .into_iter()
    .map(|share| share.map(Vec::into_iter))
    .collect::<Result<Vec<_>, _>>()?;
    Ok((0..items.len())
        .filter_map(|i| shares[i % threads].next())
        .collect())
}

/// `0..len` cut into `parts` nearly equal, consecutive ranges (fewer when `len` is small).
pub(crate) fn split(len: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, len.max(1));
    (0..parts)
        .map(|i| len * i / parts..len * (i + 1) / parts)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::ModelError;

    #[test]
    fn parallel_map_keeps_the_order_and_the_first_error() {
        let items: Vec<usize> = (0..7).collect();
        for threads in [1, 2, 3, 9] {
            let doubled = parallel_map(&items, threads, |&i| Ok::<_, ModelError>(2 * i));
            assert_eq!(doubled.unwrap(), [0, 2, 4, 6, 8, 10, 12]);
        }
        let failed = parallel_map(&items, 2, |&i| {
            if i == 3 {
                Err(ModelError::Input("three".into()))
            } else {
                Ok(i)
            }
        });
        assert!(failed.is_err());
    }

    #[test]
    fn split_covers_the_range_in_order() {
        assert_eq!(split(10, 3), [0..3, 3..6, 6..10]);
        assert_eq!(split(1, 2), vec![std::ops::Range { start: 0, end: 1 }]);
        assert_eq!(split(0, 2).len(), 1);
    }
}
