//! What belongs to one process: the forward threads (one per device runs
//! every forward pass), the count of work in flight, and an orderly stop.
//! A process made by `fork` starts its own of each.
//!
//! Work runs on threads of its own (forward passes, loads, the engine's
//! stages), and a call may return before its forward pass has finished
//! (cancelled, or interrupted). A process that exits meanwhile tears
//! libtorch's globals down under the running pass, and a Python interpreter
//! that finalizes frees arrays a daemon thread's call still reads: both
//! crashed (the command line after Ctrl-C, a script ending with a daemon
//! thread mid-call). [`stop`] cancels what runs and waits for it; the
//! command line ends with it, the Python package at interpreter exit.

use std::panic::AssertUnwindSafe;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, SendError, Sender};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tch::Device;

use crate::error::{Error, Result};

/// Work for a forward thread.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// Queue slots: the CPU, then CUDA devices by index (the last slot shared by
/// indices beyond).
const SLOTS: usize = 65;

/// The forward threads of one process.
///
/// A child made by `fork` (Python's `multiprocessing` on Linux, a pool of
/// workers) inherits the parent's memory but only the thread that forked.
/// The parent's queues would take jobs no thread runs (a call in the child
/// waited for ever), a queue's mutex held by another parent thread at the
/// fork stays locked, and libtorch's OpenMP team belongs to the parent's
/// forward thread (on the thread that used it, a pass in the child never
/// returns). So each process builds its own set on first use, never
/// touching its parent's: fresh threads start fresh OpenMP teams.
struct Threads {
    pid: u32,
    queues: [Mutex<Option<Sender<Job>>>; SLOTS],
    /// CUDA was used here (a load or a forward pass on a GPU).
    cuda_started: AtomicBool,
    /// CUDA was used in an ancestor before it forked: it cannot run in this
    /// process.
    cuda_before_fork: bool,
    /// [`Work`] alive: calls, loads and forward passes.
    in_flight: AtomicUsize,
    /// [`stop`] was called: no new work starts, running work cancels.
    stopping: AtomicBool,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threads")
            .field("pid", &self.pid)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// This process's [`Threads`] (or an ancestor's, until first use here).
static CURRENT: AtomicPtr<Threads> = AtomicPtr::new(ptr::null_mut());

/// The forward threads of the calling process, made on first use in it.
fn threads() -> &'static Threads {
    let pid = std::process::id();
    let seen = CURRENT.load(Ordering::Acquire);
    // SAFETY: CURRENT holds null or a pointer from `Box::into_raw` below
    // that was published and is never freed, so it stays valid for the
    // rest of the process (and of its forked children, which copy it).
    let inherited = unsafe { seen.as_ref() };
    if let Some(current) = inherited.filter(|t| t.pid == pid) {
        return current;
    }
    let cuda_before_fork =
        inherited.is_some_and(|t| t.cuda_before_fork || t.cuda_started.load(Ordering::Relaxed));
    let fresh = Box::into_raw(Box::new(Threads {
        pid,
        queues: [const { Mutex::new(None) }; SLOTS],
        cuda_started: AtomicBool::new(false),
        cuda_before_fork,
        in_flight: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
    }));
    match CURRENT.compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: `fresh` was just made by `Box::into_raw` and is now
        // published, never to be freed.
        Ok(_) => unsafe { &*fresh },
        Err(other) => {
            // Another thread of this process published its set first (only
            // this process's threads write CURRENT now, each with this
            // pid); ours was never shared.
            // SAFETY: `fresh` came from `Box::into_raw` above and no one
            // else saw it; `other` is a published, never-freed set.
            unsafe {
                drop(Box::from_raw(fresh));
                &*other
            }
        }
    }
}

/// Runs `job` on the forward thread of `device`, started on first use: one
/// thread per device (the CPU, then CUDA devices by index) runs every
/// forward pass of the process, one at a time. libtorch parallelises inside
/// each pass (intra-op threads on the CPU, the whole GPU), and concurrent
/// passes would only oversubscribe the cores, each caller spinning its own
/// OpenMP pool; one long-lived thread also keeps one warm pool. Callers wait
/// for their job's reply, so the queue holds at most one job per caller.
///
/// The job counts as work in flight until it has run.
///
/// # Errors
/// [`Error::DeviceUnavailable`] for a GPU in a process forked after its
/// parent used CUDA ([`claim_cuda`]); [`Error::Cancelled`] once [`stop`] was called;
/// [`Error::Internal`] when no thread can start.
pub(crate) fn run_forward(device: Device, job: Job) -> Result<()> {
    let threads = threads();
    let work = begin()?;
    let job: Job = Box::new(move || {
        job();
        drop(work);
    });
    let slot = match device {
        Device::Cuda(i) => (i + 1).min(SLOTS - 1),
        _ => 0,
    };
    claim_cuda(device)?;
    let mut queue = threads.queues[slot]
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let job = match queue.as_ref() {
        Some(tx) => match tx.send(job) {
            Ok(()) => return Ok(()),
            // The thread is gone (it cannot panic, but be safe): start another.
            Err(SendError(job)) => job,
        },
        None => job,
    };
    let (tx, rx) = channel::<Job>();
    std::thread::Builder::new()
        .name(format!("unet-rt-forward-{slot}"))
        .spawn(move || {
            crate::model::align_cpu_threads();
            let _no_grad = tch::no_grad_guard();
            for job in rx {
                // A panic in a job is a bug; it must not take the thread
                // (and every later forward pass) with it. The job's reply
                // channel closes, which its caller reports.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
            }
        })
        .map_err(|e| Error::Internal(format!("cannot start the forward thread: {e}")))?;
    tx.send(job)
        .map_err(|_| Error::Internal("the forward thread stopped at its start".to_owned()))?;
    *queue = Some(tx);
    Ok(())
}

/// Notes that `device`, if a GPU, is about to be used by this process (a
/// load or a forward pass), so that its forked children know CUDA is out of
/// their reach.
///
/// # Errors
/// [`Error::DeviceUnavailable`] in a process forked from one that had used
/// CUDA: CUDA cannot run in such a child (a load there failed deep in
/// libtorch, or said the machine had no GPU).
pub(crate) fn claim_cuda(device: Device) -> Result<()> {
    if !device.is_cuda() {
        return Ok(());
    }
    let threads = threads();
    if threads.cuda_before_fork {
        return Err(Error::DeviceUnavailable(format!(
            "{}: this process was forked from one that had used CUDA, and CUDA cannot run in \
             such a child; start worker processes with the \"spawn\" or \"forkserver\" method \
             (Python: multiprocessing.get_context(\"spawn\"))",
            crate::device_name(device)
        )));
    }
    threads.cuda_started.store(true, Ordering::Relaxed);
    Ok(())
}

/// Work in flight (a call, a load, a forward pass): counted while alive, so
/// that [`stop`] can wait for it. Made by [`begin`].
#[must_use = "work counts while the guard is alive"]
#[derive(Debug)]
pub struct Work {
    threads: &'static Threads,
}

impl Drop for Work {
    fn drop(&mut self) {
        self.threads.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts work that is about to start until the returned guard drops.
///
/// # Errors
/// [`Error::Cancelled`] once [`stop`] was called: nothing new starts.
pub fn begin() -> Result<Work> {
    let threads = threads();
    // Counted before the flag is read (both SeqCst): a `stop` that misses
    // this work's count is one whose flag this load sees.
    threads.in_flight.fetch_add(1, Ordering::SeqCst);
    let work = Work { threads };
    if threads.stopping.load(Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }
    Ok(work)
}

/// Whether [`stop`] was called in this process: running work cancels at its
/// next check (the engine between batches, probing between passes).
pub fn stopping() -> bool {
    threads().stopping.load(Ordering::Relaxed)
}

/// Stops this process's work: new work is refused ([`Error::Cancelled`]),
/// running calls cancel at their next check, and this waits up to `wait`
/// (polling `interrupted` too, which ends the wait when it returns true)
/// for what runs to finish. Returns whether nothing runs any longer; a
/// forward pass already started cannot stop early and is waited for.
///
/// There is no way back: call it when the program ends.
pub fn stop(wait: Duration, mut interrupted: impl FnMut() -> bool) -> bool {
    let threads = threads();
    threads.stopping.store(true, Ordering::SeqCst);
    let start = Instant::now();
    loop {
        if threads.in_flight.load(Ordering::SeqCst) == 0 {
            return true;
        }
        if start.elapsed() >= wait || interrupted() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Ends the process at once with `code`, without running destructors or
/// exit handlers: for a program whose work is still running on unet_rt's
/// threads ([`stop`] returned false), where tearing libtorch down under a
/// running forward pass would crash it. Flush what must be written first.
pub fn exit_immediately(code: u8) -> ! {
    // SAFETY: `_exit` ends the process without touching any state; it is
    // async-signal-safe and sound to call from any thread at any time.
    unsafe { libc::_exit(i32::from(code)) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::time::{Duration, Instant};

    /// Runs a job that returns `value` on `device`'s forward thread.
    fn round_trip(device: Device, value: u8) -> Result<u8> {
        let (tx, rx) = sync_channel(1);
        run_forward(
            device,
            Box::new(move || {
                let _ = tx.send(value);
            }),
        )?;
        rx.recv_timeout(Duration::from_secs(20))
            .map_err(|e| Error::Internal(format!("no reply: {e}")))
    }

    /// What a forked child finds: its own CPU thread answers, and CUDA,
    /// started in the parent, is refused. Exit code 0 when both hold.
    fn in_child() -> i32 {
        let cpu = round_trip(Device::Cpu, 7);
        let cuda = round_trip(Device::Cuda(0), 9);
        match (cpu, cuda) {
            (Ok(7), Err(Error::DeviceUnavailable(m))) if m.contains("spawn") => 0,
            (Ok(7), _) => 2,
            _ => 3,
        }
    }

    /// Runs `child` in a forked copy of this process and returns its exit
    /// code (a hang past a minute fails the test).
    fn in_fork(child: fn() -> i32) -> i32 {
        // SAFETY: the child runs only `child` (channels and new threads;
        // glibc's fork keeps malloc usable) and leaves with `_exit`, running
        // no destructors or handlers the parent's threads own.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = child();
            // SAFETY: ends the child at once, as above.
            unsafe { libc::_exit(code) };
        }
        let start = Instant::now();
        let mut status = 0;
        loop {
            // SAFETY: `pid` is our child; `status` is a valid out-pointer.
            let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if done == pid {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                // SAFETY: kills and reaps our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                panic!("the forked child hung");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(libc::WIFEXITED(status), "child status {status}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn a_forked_child_starts_its_own_threads_and_refuses_cuda() {
        // The parent's threads exist before the fork. No CUDA is needed:
        // the job itself never touches the device.
        assert_eq!(round_trip(Device::Cpu, 1).unwrap(), 1);
        assert_eq!(round_trip(Device::Cuda(0), 2).unwrap(), 2);
        assert_eq!(in_fork(in_child), 0, "2: CUDA not refused, 3: CPU failed");
        // The parent's own threads still answer.
        assert_eq!(round_trip(Device::Cpu, 4).unwrap(), 4);
    }

    /// `stop` in a process of its own (it cannot be undone): it waits for
    /// work alive, refuses new work, and cancels waiting passes.
    fn stopping_child() -> i32 {
        let work = begin().expect("work starts before stop");
        let (release_tx, release_rx) = sync_channel::<()>(1);
        // A forward pass that runs until released.
        if run_forward(
            Device::Cpu,
            Box::new(move || {
                let _ = release_rx.recv();
            }),
        )
        .is_err()
        {
            return 2;
        }
        if stop(Duration::from_millis(50), || false) || !stopping() {
            return 3; // it claimed idle with work alive
        }
        if !matches!(begin(), Err(Error::Cancelled)) || round_trip(Device::Cpu, 1).is_ok() {
            return 4; // new work started after stop
        }
        drop(work);
        if stop(Duration::from_millis(50), || false) {
            return 5; // the pass still runs
        }
        let _ = release_tx.send(());
        if !stop(Duration::from_secs(20), || false) {
            return 6;
        }
        // An interruption ends the wait at once.
        let _held = Work { threads: threads() };
        threads().in_flight.fetch_add(1, Ordering::SeqCst);
        let t0 = Instant::now();
        if stop(Duration::from_secs(20), || true) || t0.elapsed() > Duration::from_secs(1) {
            return 7;
        }
        0
    }

    #[test]
    fn stop_waits_for_work_in_flight_and_refuses_new_work() {
        assert_eq!(in_fork(stopping_child), 0);
    }
}
