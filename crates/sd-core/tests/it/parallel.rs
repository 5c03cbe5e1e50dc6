//! `sd_core::parallel::parallel_for` on LibTorch's intra-op threads: every index is visited exactly once, in ranges
//! run by up to `tch::get_num_threads()` threads, and a panicking body becomes an error instead of unwinding into
//! C++.

use sd_core::parallel::parallel_for;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

#[test]
fn every_index_is_visited_once_on_libtorch_threads() {
    let n = 10_000;
    let seen: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
    let threads = Mutex::new(HashSet::new());
    parallel_for(n, 16, |begin, end| {
        threads.lock().unwrap().insert(std::thread::current().id());
        // Enough work per range that every thread takes part.
        for s in &seen[begin..end] {
            s.fetch_add(1, Ordering::Relaxed);
            std::hint::black_box((0..200).sum::<u64>());
        }
    })
    .unwrap();
    assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
    let used = threads.lock().unwrap().len();
    println!("parallel_for used {used} threads of {}", tch::get_num_threads());
    assert!((1..=tch::get_num_threads().max(1) as usize).contains(&used));
    parallel_for(0, 1, |_, _| panic!("an empty loop runs nothing")).unwrap();
}

#[test]
fn a_panicking_body_is_an_error() {
    let err = parallel_for(4, 1, |begin, _| assert!(begin > 100, "boom")).unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
}
