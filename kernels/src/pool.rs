//! A persistent worker pool for the forward pass.
//!
//! Decoding one token of a 135M model runs a couple of hundred small
//! matrix products, each a few tens of microseconds of work. Handing each to
//! a fork-join scheduler costs several microseconds of wake-up and stealing
//! per call; here the workers stay awake between calls, spinning on an
//! epoch counter for a short while ([`SPIN`]) and only then parking, so a
//! dispatch costs about the time of one cache-line transfer. The calling
//! thread works too: a pool of `threads` runs `threads - 1` workers.
//!
//! Work is split into numbered tasks taken from a shared counter, so a slow
//! core (or a core shared with another process) takes fewer of them.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks. Long enough to cover the
/// gap between two matrix products of one token (and between tokens),
/// short enough not to burn a core when the engine is idle.
pub const SPIN: Duration = Duration::from_millis(2);

/// The job of one [`Pool::run`] call: a borrowed closure with its lifetime
/// erased. It is only dereferenced between the epoch bump that publishes it
/// and the `pending` count reaching zero, while `run` keeps the closure alive.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    n_tasks: usize,
}

struct Shared {
    /// Bumped once per job; workers wait for it to change.
    epoch: AtomicU64,
    /// The current job; written only by `run` while no worker reads it.
    job: UnsafeCell<Job>,
    /// Next task index to hand out.
    next: AtomicUsize,
    /// Workers that have not yet finished the current job.
    pending: AtomicUsize,
    /// Workers parked on `wake`.
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    panicked: AtomicBool,
    shutdown: AtomicBool,
}

// SAFETY: `job` is written by the single thread holding `Pool::busy` before
// it publishes the job with a Release bump of `epoch`, and read by workers
// only after an Acquire load sees that bump; it is not written again until
// every worker has decremented `pending` (Release, read with Acquire). The
// closure it points to is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only a borrowed `Sync` closure.
unsafe impl Send for Shared {}

/// A fixed set of worker threads that run [`Pool::run`] jobs together with
/// the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time; a second caller runs its job on its own thread.
    busy: Mutex<()>,
    threads: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Pool {
    /// A pool running jobs on `threads` threads (the caller and
    /// `threads - 1` workers); 0 is taken as 1.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let noop: &'static (dyn Fn(usize) + Sync) = &|_| {};
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(Job {
                f: noop as *const _,
                n_tasks: 0,
            }),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("microllm-{i}"))
                    .spawn(move || worker(&s))
                    .expect("cannot spawn a worker thread")
            })
            .collect();
        Pool {
            shared,
            workers,
            busy: Mutex::new(()),
            threads,
        }
    }

    /// Threads a job runs on, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` for every `i` in `0..n_tasks`, spread over the pool, and
    /// returns when all are done. Each index runs exactly once. While another
    /// thread's job occupies the pool, the tasks run on the calling thread.
    ///
    /// # Panics
    /// When `f` panicked on any thread.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        let guard = match self.busy.try_lock() {
            Ok(g) if self.threads > 1 && n_tasks > 1 => g,
            _ => {
                (0..n_tasks).for_each(f);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY: we hold `busy`, and the previous job ended with `pending`
        // at zero, so no worker reads `job` now (see `unsafe impl Sync`).
        // The pointer's lifetime is erased; it is dereferenced only before
        // this function returns (we wait for `pending == 0` below).
        unsafe {
            let f: *const (dyn Fn(usize) + Sync + '_) = f;
            *s.job.get() = Job {
                f: std::mem::transmute::<
                    *const (dyn Fn(usize) + Sync + '_),
                    *const (dyn Fn(usize) + Sync + 'static),
                >(f),
                n_tasks,
            };
        }
        s.next.store(0, Ordering::Relaxed);
        s.pending.store(self.workers.len(), Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| take_tasks(s, f, n_tasks)));
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        drop(guard);
        let theirs = s.panicked.swap(false, Ordering::Relaxed);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        assert!(!theirs, "a pool task panicked");
    }

    /// Splits `out` into consecutive chunks of `chunk` elements (the last
    /// may be shorter) and runs `f(i, chunk_i)` for each, spread over the
    /// pool.
    pub fn for_chunks<T: Send>(
        &self,
        out: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let chunk = chunk.max(1);
        let len = out.len();
        let n_tasks = len.div_ceil(chunk);
        let base = SendPtr(out.as_mut_ptr());
        self.run(n_tasks, &|i| {
            let start = i * chunk;
            let end = (start + chunk).min(len);
            // SAFETY: `start..end` lies inside `out` (i < n_tasks), the
            // ranges of different `i` are disjoint, each `i` runs exactly
            // once, and `out` stays mutably borrowed until `run` returns.
            let part =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
            f(i, part);
        });
    }
}

/// A raw pointer that may cross threads; see the SAFETY note at its use.
struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: only used by `for_chunks`, which hands out disjoint ranges.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut T {
        self.0
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Takes task indices from the shared counter until none are left.
fn take_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync), n_tasks: usize) {
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n_tasks {
            return;
        }
        f(i);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            if spins % 256 == 0 && start.elapsed() > SPIN {
                let mut l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, Ordering::SeqCst);
                while s.epoch.load(Ordering::SeqCst) == seen {
                    l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, Ordering::SeqCst);
                break;
            }
            std::hint::spin_loop();
        }
        seen = s.epoch.load(Ordering::Acquire);
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the Acquire load of the new epoch orders this read after
        // `run` wrote the job; `run` keeps the closure alive until we
        // decrement `pending` below.
        let job = unsafe { *s.job.get() };
        let f = unsafe { &*job.f };
        if catch_unwind(AssertUnwindSafe(|| take_tasks(s, f, job.n_tasks))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

static GLOBAL: OnceLock<Pool> = OnceLock::new();
static REQUESTED: AtomicUsize = AtomicUsize::new(0);

/// Sets the thread count of the [`global`] pool. Takes effect only before
/// the pool is first used; returns false when it is too late.
pub fn set_threads(threads: usize) -> bool {
    REQUESTED.store(threads, Ordering::SeqCst);
    GLOBAL.get().is_none()
}

/// The process-wide pool the model runs on: [`set_threads`] threads, or by
/// default the number of cores available (`std::thread::available_parallelism`).
pub fn global() -> &'static Pool {
    GLOBAL.get_or_init(|| {
        let n = match REQUESTED.load(Ordering::SeqCst) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Pool::new(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for threads in 1..=4 {
            let pool = Pool::new(threads);
            for n_tasks in [0usize, 1, 2, 3, 17, 1000] {
                let counts: Vec<AtomicUsize> = (0..n_tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n_tasks, &|i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn chunks_are_disjoint_and_cover_the_slice() {
        let pool = Pool::new(3);
        for len in [0usize, 1, 7, 64, 1001] {
            for chunk in [1usize, 3, 64, 5000] {
                let mut v = vec![0usize; len];
                pool.for_chunks(&mut v, chunk, &|i, part| {
                    for (j, x) in part.iter_mut().enumerate() {
                        *x += i * chunk + j + 1;
                    }
                });
                assert!(v.iter().enumerate().all(|(k, &x)| x == k + 1));
            }
        }
    }

    #[test]
    fn many_small_jobs_and_parking() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        for round in 0..2000 {
            pool.run(4, &|i| {
                total.fetch_add(i, Ordering::Relaxed);
            });
            if round == 1000 {
                // Let the worker park, then wake it.
                std::thread::sleep(SPIN * 3);
            }
        }
        assert_eq!(total.load(Ordering::Relaxed), 2000 * 6);
    }

    #[test]
    fn concurrent_callers_fall_back_to_their_own_thread() {
        let pool = Arc::new(Pool::new(2));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let sum = AtomicUsize::new(0);
                    for _ in 0..200 {
                        p.run(8, &|i| {
                            sum.fetch_add(i, Ordering::Relaxed);
                        });
                    }
                    sum.load(Ordering::Relaxed)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 200 * 28);
        }
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(64, &|i| {
                if i == 40 {
                    panic!("task 40");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(10, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 10);
    }
}
