//! The I/O seam of the disk tier: positioned reads and writes that finish or fail
//! whole, a fault injector for tests, and the worker pool that runs them.
//!
//! Core types: [`IoPool`] (worker threads fed by two bounded queues: reads, which
//! a loader waits on, before writes, which nobody waits on), [`Faults`] (errors a
//! test can make the next I/O return, since a real disk cannot be told to fail).
//!
//! Workflow: a caller builds a job (a closure owning its buffer) and submits it:
//! [`IoPool::submit_read`] blocks when the read queue is full (the caller is a
//! loader thread, never the engine's), [`IoPool::try_submit_write`] never blocks and
//! hands the job back when the write queue is full (back-pressure: the offload is
//! dropped and counted, the engine never waits).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

/// A unit of work for a worker.
pub type Job = Box<dyn FnOnce() + Send>;

/// Errors a test makes the next I/Os return.
#[derive(Debug, Default)]
pub struct Faults {
    write_errno: AtomicI32,
    write_count: AtomicU64,
    torn_bytes: AtomicU64,
    read_errno: AtomicI32,
    read_count: AtomicU64,
    slow_write_ms: AtomicU64,
    panic_reads: AtomicU64,
}

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next `n` writes fail with `errno` (e.g. `ENOSPC`, `EIO`).
    WriteError {
        /// OS error code.
        errno: i32,
        /// How many writes.
        n: u64,
    },
    /// The next write stores only its first `bytes` bytes and reports success (a
    /// torn write whose process died before it could know).
    TornWrite {
        /// Bytes that reach the file.
        bytes: u64,
    },
    /// The next `n` reads fail with `errno`.
    ReadError {
        /// OS error code.
        errno: i32,
        /// How many reads.
        n: u64,
    },
    /// The next write takes `ms` milliseconds longer (a slow or busy device).
    SlowWrite {
        /// Added latency.
        ms: u64,
    },
    /// The next `n` reads panic inside their job (a bug in a read path).
    PanicRead {
        /// How many reads.
        n: u64,
    },
}

impl Faults {
    /// Arms a fault.
    pub fn inject(&self, f: Fault) {
        match f {
            Fault::WriteError { errno, n } => {
                self.write_errno.store(errno, Ordering::SeqCst);
                self.write_count.store(n, Ordering::SeqCst);
            }
            Fault::TornWrite { bytes } => self.torn_bytes.store(bytes + 1, Ordering::SeqCst),
            Fault::ReadError { errno, n } => {
                self.read_errno.store(errno, Ordering::SeqCst);
                self.read_count.store(n, Ordering::SeqCst);
            }
            Fault::SlowWrite { ms } => self.slow_write_ms.store(ms, Ordering::SeqCst),
            Fault::PanicRead { n } => self.panic_reads.store(n, Ordering::SeqCst),
        }
    }

    fn take(count: &AtomicU64) -> bool {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
            .is_ok()
    }

    /// Writes `buf` at `off`, whole, or fails.
    pub fn write_all_at(&self, f: &File, buf: &[u8], off: u64) -> io::Result<()> {
        if Self::take(&self.write_count) {
            return Err(io::Error::from_raw_os_error(self.write_errno.load(Ordering::SeqCst)));
        }
        let slow = self.slow_write_ms.swap(0, Ordering::SeqCst);
        if slow > 0 {
            std::thread::sleep(std::time::Duration::from_millis(slow));
        }
        let torn = self.torn_bytes.swap(0, Ordering::SeqCst);
        if torn > 0 {
            let keep = ((torn - 1) as usize).min(buf.len());
            return write_prefix(f, buf, off, keep);
        }
        f.write_all_at(buf, off)
    }

    /// Fills `buf` from `off`, whole, or fails (a short file is `UnexpectedEof`).
    pub fn read_exact_at(&self, f: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
        if Self::take(&self.panic_reads) {
            panic!("injected read panic");
        }
        if Self::take(&self.read_count) {
            return Err(io::Error::from_raw_os_error(self.read_errno.load(Ordering::SeqCst)));
        }
        f.read_exact_at(buf, off)
    }
}

/// A torn write through O_DIRECT must still be sector-sized: write the sectors that
/// hold the first `keep` bytes, with the bytes past `keep` taken from the file.
fn write_prefix(f: &File, buf: &[u8], off: u64, keep: usize) -> io::Result<()> {
    let sector = super::format::SECTOR;
    let end = keep.next_multiple_of(sector).min(buf.len());
    if end == 0 {
        return Ok(());
    }
    let mut tmp = super::format::AlignedBuf::zeroed(end);
    let t = &mut tmp.as_mut_slice()[..end];
    f.read_exact_at(t, off)?;
    t[..keep].copy_from_slice(&buf[..keep]);
    f.write_all_at(t, off)
}

/// Worker threads with a read queue and a write queue, both bounded.
pub struct IoPool {
    reads: Option<Sender<Job>>,
    writes: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl IoPool {
    /// Starts `threads` workers; each queue holds at most `queue` jobs.
    pub fn start(threads: usize, queue: usize, dispatch: tracing::Dispatch) -> io::Result<Self> {
        let (rtx, rrx) = bounded::<Job>(queue);
        let (wtx, wrx) = bounded::<Job>(queue);
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let (rrx, wrx, d) = (rrx.clone(), wrx.clone(), dispatch.clone());
            let h = std::thread::Builder::new()
                .name(format!("tierkv-io-{i}"))
                .spawn(move || tracing::dispatcher::with_default(&d, || work(&rrx, &wrx)))?;
            workers.push(h);
        }
        Ok(Self {
            reads: Some(rtx),
            writes: Some(wtx),
            workers,
        })
    }

    /// Queues a read job, waiting while the read queue is full.
    pub fn submit_read(&self, job: Job) -> Result<(), Job> {
        match &self.reads {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Queues a write job, or hands it back at once when the queue is full.
    pub fn try_submit_write(&self, job: Job) -> Result<(), Job> {
        match &self.writes {
            Some(tx) => tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
            }),
            None => Err(job),
        }
    }

    /// `(reads, writes)` waiting in the queues.
    pub fn depths(&self) -> (usize, usize) {
        (
            self.reads.as_ref().map_or(0, |t| t.len()),
            self.writes.as_ref().map_or(0, |t| t.len()),
        )
    }
}

/// Runs one job; a panic inside it is logged and contained (the job's result
/// channel closes, which its caller reads as a failed block), never the end of
/// the worker.
fn run(job: Job) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
        tracing::error!("a disk-tier I/O job panicked; its blocks count as failed");
    }
}

fn work(reads: &Receiver<Job>, writes: &Receiver<Job>) {
    loop {
        if let Ok(job) = reads.try_recv() {
            run(job);
            continue;
        }
        let job = crossbeam_channel::select! {
            recv(reads) -> j => j,
            recv(writes) -> j => j,
        };
        match job {
            Ok(job) => run(job),
            Err(_) => {
                // Closed: finish what is still queued in either queue, then stop.
                reads.try_iter().chain(writes.try_iter()).for_each(run);
                return;
            }
        }
    }
}

impl Drop for IoPool {
    /// Closes the queues and waits for the workers to finish every queued job (a
    /// queued write is completed, not lost).
    fn drop(&mut self) {
        self.reads.take();
        self.writes.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
