//! The forward threads: one per device runs every forward pass of the
//! process, and a process made by `fork` starts its own.

use std::panic::AssertUnwindSafe;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::mpsc::{channel, SendError, Sender};
use std::sync::{Mutex, PoisonError};

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
    /// A CUDA forward thread was started here.
    cuda_started: AtomicBool,
    /// A CUDA forward thread was started in an ancestor before it forked:
    /// CUDA cannot run in this process.
    cuda_before_fork: bool,
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
/// # Errors
/// [`Error::DeviceUnavailable`] for a GPU in a process forked after CUDA
/// started in its parent; [`Error::Internal`] when no thread can start.
pub(crate) fn run(device: Device, job: Job) -> Result<()> {
    let threads = threads();
    let slot = match device {
        Device::Cuda(i) => (i + 1).min(SLOTS - 1),
        _ => 0,
    };
    if slot > 0 {
        if threads.cuda_before_fork {
            return Err(Error::DeviceUnavailable(format!(
                "{device:?}: this process was forked from one that had started CUDA, and CUDA cannot \
                 run in such a child; start worker processes with the \"spawn\" or \"forkserver\" \
                 method (Python: multiprocessing.get_context(\"spawn\"))"
            )));
        }
        threads.cuda_started.store(true, Ordering::Relaxed);
    }
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::time::{Duration, Instant};

    /// Runs a job that returns `value` on `device`'s forward thread.
    fn round_trip(device: Device, value: u8) -> Result<u8> {
        let (tx, rx) = sync_channel(1);
        run(
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

    #[test]
    fn a_forked_child_starts_its_own_threads_and_refuses_cuda() {
        // The parent's threads exist before the fork. No CUDA is needed:
        // the job itself never touches the device.
        assert_eq!(round_trip(Device::Cpu, 1).unwrap(), 1);
        assert_eq!(round_trip(Device::Cuda(0), 2).unwrap(), 2);
        // SAFETY: the child runs only `in_child` (channels and one new
        // thread; glibc's fork keeps malloc usable) and leaves with `_exit`,
        // running no destructors or handlers the parent's threads own.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = in_child();
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
        assert_eq!(libc::WEXITSTATUS(status), 0, "2: CUDA not refused, 3: CPU failed");
        // The parent's own threads still answer.
        assert_eq!(round_trip(Device::Cpu, 4).unwrap(), 4);
    }
}
