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
//! Work is split into numbered tasks. Each thread owns a contiguous share
//! of them and takes its own from the front; a thread that runs out steals
//! from the back of the others' shares, so a slow core (or a core shared
//! with another process) ends up with fewer. Owning a contiguous share
//! keeps each thread reading weight rows in one ascending stream (the
//! kernels' prefetching and the hardware's carry over from one task to the
//! next) and its counter in its own cache; one shared counter made every
//! task a cross-core transfer and a new stream: 0.2 µs a task, 20% of a
//! 2-thread decode step.

use std::cell::UnsafeCell;
use std::ops::Range;
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
/// erased. Only workers that joined the job dereference it, and `run`
/// waits for them before the closure goes out of scope.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    /// All tasks in index order from one share (see
    /// [`Pool::for_chunks_in_order`]).
    in_order: bool,
}

struct Shared {
    /// Bumped once per job; workers wait for it to change.
    epoch: AtomicU64,
    /// The current job; written only by `run` while no worker reads it.
    job: UnsafeCell<Job>,
    /// One share of the current job's tasks per thread (the caller's is
    /// 0, a worker's the order in which it joined, plus one).
    shares: Box<[Share]>,
    /// Workers that joined the current job, plus [`CLOSED`] once the caller
    /// has finished its share: a worker arriving after that stays out, so
    /// a worker the OS has not scheduled yet never holds the caller up.
    joined: AtomicUsize,
    /// Workers that joined and have finished the current job.
    done: AtomicUsize,
    /// Workers parked on `wake`.
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    panicked: AtomicBool,
    shutdown: AtomicBool,
}

/// Set in `joined` when the job takes no more workers.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// Tasks `front..back` of one thread's share, packed as `front | back << 32`
/// in one atomic so that the owner (taking from the front) and thieves
/// (from the back) never take the same task. Aligned to its own pair of
/// cache lines, so the owner's taking stays in its own cache.
#[repr(align(128))]
struct Share(AtomicU64);

impl Share {
    fn set(&self, tasks: Range<usize>) {
        let (a, b) = (tasks.start as u64, tasks.end as u64);
        self.0.store(a | b << 32, Ordering::Relaxed);
    }

    /// Takes the first task left (`front_end` true) or the last one.
    fn take(&self, front_end: bool) -> Option<usize> {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (front, back) = (cur & 0xFFFF_FFFF, cur >> 32);
            if front >= back {
                return None;
            }
            let (next, task) = if front_end {
                ((front + 1) | back << 32, front)
            } else {
                (front | (back - 1) << 32, back - 1)
            };
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(task as usize),
                Err(now) => cur = now,
            }
        }
    }
}

// SAFETY: `job` is written by the single thread holding `Pool::busy` before
// it publishes the job with a Release bump of `epoch`, and read by a worker
// only after it has joined that job (`joined` without CLOSED, AcqRel); the
// caller closes the job and waits until every joined worker has counted
// itself in `done` (Release, read with Acquire) before it returns or writes
// `job` again. The closure it points to is `Sync`.
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
                in_order: false,
            }),
            shares: (0..threads).map(|_| Share(AtomicU64::new(0))).collect(),
            joined: AtomicUsize::new(CLOSED),
            done: AtomicUsize::new(0),
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
        self.run_job(n_tasks, f, false)
    }

    fn run_job(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync), in_order: bool) {
        if n_tasks == 0 {
            return;
        }
        let guard = match self.busy.try_lock() {
            // Shares count tasks in 32 bits; more tasks than that (never
            // asked for) run here.
            Ok(g) if self.threads > 1 && n_tasks > 1 && n_tasks <= u32::MAX as usize => g,
            _ => {
                (0..n_tasks).for_each(f);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY: we hold `busy`, and the previous job was closed with every
        // joined worker done, so no worker reads `job` now (see `unsafe impl
        // Sync`). The pointer's lifetime is erased; it is dereferenced only
        // by workers that joined, and we wait for them below.
        unsafe {
            let f: *const (dyn Fn(usize) + Sync + '_) = f;
            *s.job.get() = Job {
                f: std::mem::transmute::<
                    *const (dyn Fn(usize) + Sync + '_),
                    *const (dyn Fn(usize) + Sync + 'static),
                >(f),
                in_order,
            };
        }
        // Equal contiguous shares, in thread order; in order, all in the
        // caller's.
        let p = if in_order { 1 } else { s.shares.len() };
        let cut = |k: usize| (n_tasks as u64 * k.min(p) as u64 / p as u64) as usize;
        for (k, share) in s.shares.iter().enumerate() {
            share.set(cut(k)..cut(k + 1));
        }
        s.done.store(0, Ordering::Relaxed);
        s.joined.store(0, Ordering::Release);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| take_tasks(s, f, 0, in_order)));
        // Every task has been taken: close the job to latecomers and wait
        // for the workers that are still in it.
        let joined = s.joined.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED;
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) != joined {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                // A joined worker was descheduled: let it run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
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
        self.chunks_job(out, chunk, f, false)
    }

    /// [`Pool::for_chunks`], but the chunks are started in index order
    /// (every thread takes the lowest one left): for jobs whose chunks are
    /// sorted largest first, so that the last to finish are the smallest.
    pub fn for_chunks_in_order<T: Send>(
        &self,
        out: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        self.chunks_job(out, chunk, f, true)
    }

    fn chunks_job<T: Send>(
        &self,
        out: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
        in_order: bool,
    ) {
        let chunk = chunk.max(1);
        let len = out.len();
        let n_tasks = len.div_ceil(chunk);
        let base = SendPtr(out.as_mut_ptr());
        self.run_job(
            n_tasks,
            &|i| {
                let start = i * chunk;
                let end = (start + chunk).min(len);
                // SAFETY: `start..end` lies inside `out` (i < n_tasks), the
                // ranges of different `i` are disjoint, each `i` runs exactly
                // once, and `out` stays mutably borrowed until `run` returns.
                let part =
                    unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
                f(i, part);
            },
            in_order,
        );
    }
}

impl Pool {
    /// [`Pool::for_chunks`] over several slices in one job: slice `j` is
    /// split into chunks of `chunks[j]` elements and `f(j, i, chunk_i)`
    /// runs once for each, spread over the pool. Several small products
    /// that share an input (a token's query, key and value projections)
    /// then wait for the pool once instead of once each.
    ///
    /// # Panics
    /// When `outs` and `chunks` differ in length.
    pub fn for_chunks_multi<T: Send>(
        &self,
        outs: &mut [&mut [T]],
        chunks: &[usize],
        f: &(dyn Fn(usize, usize, &mut [T]) + Sync),
    ) {
        assert_eq!(
            outs.len(),
            chunks.len(),
            "for_chunks_multi: one chunk size per slice"
        );
        // Per slice: its base, length, chunk size and first task.
        let mut parts = Vec::with_capacity(outs.len());
        let mut tasks = 0;
        for (o, &c) in outs.iter_mut().zip(chunks) {
            let c = c.max(1);
            parts.push((SendPtr(o.as_mut_ptr()), o.len(), c, tasks));
            tasks += o.len().div_ceil(c);
        }
        let parts = &parts;
        self.run(tasks, &|t| {
            // The last slice whose first task is at or before `t`.
            let j = parts.partition_point(|p| p.3 <= t) - 1;
            let (base, len, c, first) = parts[j];
            let i = t - first;
            let start = i * c;
            let end = (start + c).min(len);
            // SAFETY: `start..end` lies inside slice `j` (its tasks are
            // `first..first + len.div_ceil(c)`), the ranges of different
            // tasks are disjoint, each task runs exactly once, and `outs`
            // stays mutably borrowed until `run` returns.
            let part =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
            f(j, i, part);
        });
    }

    /// Fills `out (n, rows)` in blocks of `per` weight rows: task `i` gets
    /// rows `i·per..`, has `f(i, block)` fill a `(rows of the block, n)`
    /// buffer, and writes it into its own columns of `out`. The transpose
    /// happens in the task, while the block is still in cache.
    pub fn for_row_blocks_transposed(
        &self,
        out: &mut [f32],
        n: usize,
        rows: usize,
        per: usize,
        f: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        assert_eq!(
            out.len(),
            n * rows,
            "for_row_blocks_transposed: out is not (n, rows)"
        );
        thread_local! {
            // A task's block, kept between tasks: a prompt's blocks are
            // hundreds of KB, and a fresh allocation per task faults its
            // pages in again.
            static BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        // Squares of the transpose: both sides stay in cache lines.
        const SQ: usize = 16;
        let per = per.max(1);
        let base = SendPtr(out.as_mut_ptr());
        self.run(rows.div_ceil(per), &|i| {
            let r0 = i * per;
            let m = per.min(rows - r0);
            BLOCK.with(|b| {
                let mut b = b.borrow_mut();
                // Kernels write every element (their tests start from NaN),
                // so old contents need no clearing.
                let len = b.len().max(m * n);
                b.resize(len, 0.0);
                let block = &mut b[..m * n];
                f(i, block);
                for t0 in (0..n).step_by(SQ) {
                    for rr0 in (0..m).step_by(SQ) {
                        for t in t0..(t0 + SQ).min(n) {
                            for rr in rr0..(rr0 + SQ).min(m) {
                                // SAFETY: (t, r0 + rr) lies inside `out`
                                // (t < n, r0 + rr < rows), and only the task
                                // owning row r0 + rr writes it; `out` stays
                                // borrowed until `run` returns.
                                unsafe { *base.get().add(t * rows + r0 + rr) = block[rr * n + t] };
                            }
                        }
                    }
                }
            });
        });
    }
}

impl Pool {
    /// Fills `out (n, rows)` in blocks of `per` columns: task `i` gets
    /// columns `i·per..` of every row, as a [`Columns`] view, and writes
    /// them in place (for kernels whose products come out token-major, so
    /// that nothing needs transposing).
    pub fn for_column_blocks(
        &self,
        out: &mut [f32],
        n: usize,
        rows: usize,
        per: usize,
        f: &(dyn Fn(usize, Columns<'_>) + Sync),
    ) {
        assert_eq!(
            out.len(),
            n * rows,
            "for_column_blocks: out is not (n, rows)"
        );
        let per = per.max(1);
        let base = SendPtr(out.as_mut_ptr());
        self.run(rows.div_ceil(per), &|i| {
            let r0 = i * per;
            let cols = r0..(r0 + per).min(rows);
            f(
                i,
                Columns {
                    base: base.get(),
                    n,
                    stride: rows,
                    cols,
                    _out: std::marker::PhantomData,
                },
            )
        });
    }
}

/// Columns `cols` of every row of an `(n, stride)` matrix: one pool task's
/// share of it. Tasks hold disjoint column ranges, so their writes never
/// meet.
pub struct Columns<'a> {
    base: *mut f32,
    n: usize,
    stride: usize,
    cols: Range<usize>,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> Columns<'a> {
    /// Columns `cols` of `out (n, stride)`, held for as long as `out` is
    /// borrowed.
    ///
    /// # Panics
    /// When `out` is not `n × stride` or `cols` reaches past `stride`.
    pub fn new(out: &'a mut [f32], n: usize, stride: usize, cols: Range<usize>) -> Columns<'a> {
        assert_eq!(
            Some(out.len()),
            n.checked_mul(stride),
            "Columns: out is not (n, stride)"
        );
        assert!(
            cols.start <= cols.end && cols.end <= stride,
            "Columns: columns outside the rows"
        );
        Columns {
            base: out.as_mut_ptr(),
            n,
            stride,
            cols,
            _out: std::marker::PhantomData,
        }
    }

    /// Rows of the matrix (tokens).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The columns this view holds.
    pub fn cols(&self) -> Range<usize> {
        self.cols.clone()
    }

    /// Elements from one row to the next.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Row `t`'s part: `cols.len()` values.
    ///
    /// # Panics
    /// When `t ≥ n`.
    pub fn row_mut(&mut self, t: usize) -> &mut [f32] {
        assert!(t < self.n, "Columns: row {t} of {}", self.n);
        // SAFETY: (t, cols) lies inside the (n, stride) matrix the view was
        // made from (t < n, cols.end ≤ stride), no other task's view holds
        // these columns, and `&mut self` keeps this slice unique.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.add(t * self.stride + self.cols.start),
                self.cols.len(),
            )
        }
    }

    /// A pointer to element `(t, cols.start + c)` for writing a block of
    /// `rows × width` that [`Columns::holds`] has approved, with row
    /// pitch [`Columns::stride`].
    ///
    /// # Panics
    /// Unless the block lies inside the view.
    pub fn block_ptr(&mut self, t: usize, c: usize, rows: usize, width: usize) -> *mut f32 {
        assert!(
            self.holds(t, c, rows, width),
            "Columns: block outside the view"
        );
        // SAFETY: in bounds, checked just above.
        unsafe { self.base.add(t * self.stride + self.cols.start + c) }
    }

    /// Whether rows `t..t + rows` × view columns `c..c + width` lie inside.
    pub fn holds(&self, t: usize, c: usize, rows: usize, width: usize) -> bool {
        t + rows <= self.n && c + width <= self.cols.len()
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
// SAFETY: only used by `for_chunks` and `for_chunks_multi`, which hand out
// disjoint ranges.
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

/// Runs the tasks of share `me` from its front, then steals from the back
/// of the other shares (the next thread's first) until none are left; in
/// order, from their front.
fn take_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync), me: usize, in_order: bool) {
    let p = s.shares.len();
    while let Some(i) = s.shares[me].take(true) {
        f(i);
    }
    for d in 1..p {
        let share = &s.shares[(me + d) % p];
        while let Some(i) = share.take(in_order) {
            f(i);
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin (yielding now and then, in case the
        // cores are oversubscribed), then park.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(128) {
                if start.elapsed() > SPIN {
                    let mut l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                    s.sleeping.fetch_add(1, Ordering::SeqCst);
                    while s.epoch.load(Ordering::SeqCst) == seen {
                        l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
                    }
                    s.sleeping.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        seen = s.epoch.load(Ordering::Acquire);
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        // Join the job unless the caller has already closed it (it may
        // even have started a newer job: then `joined` belongs to that one
        // and this worker takes part in it, which is just as good).
        let order = s.joined.fetch_add(1, Ordering::AcqRel);
        if order & CLOSED != 0 {
            continue;
        }
        // At most `threads - 1` workers join a job, so this is below
        // `shares.len()`; the modulo only keeps an index in range.
        let me = (order + 1) % s.shares.len();
        seen = s.epoch.load(Ordering::Acquire);
        // SAFETY: we joined an open job, so `run` published it (the AcqRel
        // on `joined` orders this read after its write) and keeps the
        // closure alive until we count ourselves in `done`.
        let job = unsafe { *s.job.get() };
        let f = unsafe { &*job.f };
        if catch_unwind(AssertUnwindSafe(|| take_tasks(s, f, me, job.in_order))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.done.fetch_add(1, Ordering::Release);
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
    fn owner_and_thief_never_take_the_same_task() {
        for n in [0usize, 1, 2, 7, 10_000] {
            let share = Share(AtomicU64::new(0));
            share.set(0..n);
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            std::thread::scope(|sc| {
                for front in [true, false] {
                    let (share, counts) = (&share, &counts);
                    sc.spawn(move || {
                        let mut last = None;
                        while let Some(i) = share.take(front) {
                            counts[i].fetch_add(1, Ordering::Relaxed);
                            // Each side walks its own way.
                            if let Some(l) = last {
                                assert_eq!(i, if front { l + 1 } else { l - 1 });
                            }
                            last = Some(i);
                        }
                    });
                }
            });
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    #[test]
    fn a_thread_held_up_has_its_share_stolen() {
        // Task 0 (the caller's first) waits until every other task has run:
        // the worker must run its own share and steal the rest of the
        // caller's. A deadline turns a failure into an assertion, not a hang.
        let pool = Pool::new(2);
        let n = 100;
        let ran = AtomicUsize::new(0);
        let waited = AtomicBool::new(false);
        pool.run(n, &|i| {
            if i == 0 {
                let deadline = Instant::now() + Duration::from_secs(20);
                while ran.load(Ordering::Acquire) < n - 1 && Instant::now() < deadline {
                    std::thread::yield_now();
                }
                waited.store(ran.load(Ordering::Acquire) == n - 1, Ordering::Relaxed);
            } else {
                ran.fetch_add(1, Ordering::Release);
            }
        });
        assert!(
            waited.load(Ordering::Relaxed),
            "the other 99 tasks did not run"
        );
    }

    #[test]
    fn in_order_jobs_start_their_tasks_in_order() {
        // Ticket = order in which tasks started. In order, a task can start
        // before a lower one only by racing it on the other thread; with
        // shares, the second thread starts halfway (or steals from the end).
        let inversions = |in_order: bool| {
            let pool = Pool::new(2);
            let n = 200;
            let next = AtomicUsize::new(0);
            let ticket: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            let f = |i: usize, _: &mut [u8]| {
                ticket[i].store(next.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(20));
            };
            let mut chunks = vec![0u8; n];
            if in_order {
                pool.for_chunks_in_order(&mut chunks, 1, &f);
            } else {
                pool.for_chunks(&mut chunks, 1, &f);
            }
            let t: Vec<usize> = ticket.iter().map(|t| t.load(Ordering::Relaxed)).collect();
            (0..n)
                .map(|i| (i + 1..n).filter(|&j| t[j] < t[i]).count())
                .max()
                .unwrap()
        };
        // A thread descheduled between taking a task and its ticket (under
        // qemu, say) makes inversions in order too: the least of 3 runs. A
        // pool that hands out shares in order mode fails every run.
        let in_order = (0..3).map(|_| inversions(true)).min().unwrap();
        assert!(in_order <= 1, "in order: {in_order}");
        let shares = inversions(false);
        assert!(shares > 10, "shares: {shares}");
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
    fn multi_chunks_cover_every_slice_once() {
        let pool = Pool::new(3);
        for lens in [
            vec![0usize, 5],
            vec![7, 1, 64],
            vec![1001],
            vec![3, 0, 0, 9],
        ] {
            let mut bufs: Vec<Vec<usize>> = lens.iter().map(|&l| vec![0; l]).collect();
            let chunks: Vec<usize> = (0..lens.len()).map(|j| j + 2).collect();
            let mut outs: Vec<&mut [usize]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            pool.for_chunks_multi(&mut outs, &chunks, &|j, i, part| {
                assert!(part.len() <= chunks[j] && !part.is_empty());
                for (k, v) in part.iter_mut().enumerate() {
                    // Element index within slice j, plus one, tagged by j.
                    *v += 1000 * (j + 1) + i * chunks[j] + k + 1;
                }
            });
            for (j, b) in bufs.iter().enumerate() {
                for (e, &v) in b.iter().enumerate() {
                    assert_eq!(
                        v,
                        1000 * (j + 1) + e + 1,
                        "lens {lens:?} slice {j} element {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn row_blocks_land_transposed() {
        let pool = Pool::new(2);
        for (n, rows, per) in [(1usize, 5usize, 2usize), (3, 7, 3), (4, 64, 16), (2, 1, 5)] {
            let mut out = vec![f32::NAN; n * rows];
            pool.for_row_blocks_transposed(&mut out, n, rows, per, &|i, block| {
                let m = block.len() / n;
                for rr in 0..m {
                    for t in 0..n {
                        block[rr * n + t] = ((i * per + rr) * 100 + t) as f32;
                    }
                }
            });
            for t in 0..n {
                for r in 0..rows {
                    assert_eq!(out[t * rows + r], (r * 100 + t) as f32);
                }
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
