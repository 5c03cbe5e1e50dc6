//! The in-process job store and queue: jobs by id with their status, progress and result; a bounded FIFO the
//! inference thread drains; per-job change notifications for waiting requests and event streams.
//!
//! A std `Mutex` guards everything: every critical section is a few field updates, never an await or a tensor
//! operation, so the async handlers and the inference thread share it without blocking each other for long.

use crate::job::{JobId, JobRequest, JobResult, JobStatus, JobView, Progress};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, watch};

/// Flags a request handler raises and the inference thread reads between steps.
#[derive(Debug, Default)]
pub struct Control {
    /// Stop sampling and return what the current batch has (A1111 "Interrupt"); no further batches.
    pub interrupt: AtomicBool,
    /// Stop the current batch early and go on with the next (A1111 "Skip").
    pub skip: AtomicBool,
    /// The job was cancelled (`DELETE /v1/jobs/{id}`): stop and return no images.
    pub cancel: AtomicBool,
}

impl Control {
    /// What a sampling loop should do after a step: stop on interrupt, skip or cancel.
    pub fn flow(&self) -> sd_pipeline::generate::Flow {
        let stop = self.interrupt.load(Ordering::SeqCst)
            || self.cancel.load(Ordering::SeqCst)
            || self.skip.load(Ordering::SeqCst);
        if stop {
            sd_pipeline::generate::Flow::Interrupt
        } else {
            sd_pipeline::generate::Flow::Continue
        }
    }
}

/// Work for the inference thread.
pub enum Task {
    Job {
        id: JobId,
        request: Box<JobRequest>,
        control: Arc<Control>,
    },
    /// Make this catalog entry the loaded model (A1111 `POST /options` with `sd_model_checkpoint`).
    Load {
        model: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// Why a job was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull {
        limit: usize,
    },
    ShuttingDown,
    /// The queue backend (Redis) could not be reached.
    Unavailable(String),
}

struct Entry {
    view: JobView,
    control: Arc<Control>,
    tx: watch::Sender<u64>,
    started: Option<Instant>,
    finished: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<JobId, Entry>,
    queue: VecDeque<Task>,
    /// Finished jobs, oldest first, for eviction.
    finished: VecDeque<JobId>,
    running: Option<JobId>,
    shutting_down: bool,
    stopped: bool,
}

pub struct Store {
    inner: Mutex<Inner>,
    wake: Condvar,
    max_queue: usize,
    max_finished: usize,
    ttl: Duration,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Store {
    pub fn new(max_queue: usize, max_finished: usize, ttl: Duration) -> Arc<Self> {
        Arc::new(Self { inner: Mutex::new(Inner::default()), wake: Condvar::new(), max_queue, max_finished, ttl })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held leaves plain data behind; keep serving rather than poisoning every request.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a job; it is `queued` until the inference thread takes it.
    pub fn submit(&self, request: JobRequest) -> Result<JobId, SubmitError> {
        let mut g = self.lock();
        if g.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        let waiting = g.queue.iter().filter(|t| matches!(t, Task::Job { .. })).count();
        if waiting >= self.max_queue {
            return Err(SubmitError::QueueFull { limit: self.max_queue });
        }
        self.evict(&mut g);
        let id = JobId::new();
        let control = Arc::new(Control::default());
        let (tx, _) = watch::channel(0);
        let view = JobView {
            id: id.clone(),
            status: JobStatus::Queued,
            request: request.clone(),
            progress: Progress { batches: request.n_iter, ..Default::default() },
            result: None,
            error: None,
            created: unix_now(),
            queue_position: Some(waiting),
            worker: None,
        };
        g.jobs.insert(id.clone(), Entry { view, control: control.clone(), tx, started: None, finished: None });
        g.queue.push_back(Task::Job { id: id.clone(), request: Box::new(request), control });
        drop(g);
        self.wake.notify_all();
        Ok(id)
    }

    /// Queue a model switch behind the jobs already waiting.
    pub fn submit_load(&self, model: String) -> Result<oneshot::Receiver<Result<String, String>>, SubmitError> {
        let mut g = self.lock();
        if g.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        let (reply, rx) = oneshot::channel();
        g.queue.push_back(Task::Load { model, reply });
        drop(g);
        self.wake.notify_all();
        Ok(rx)
    }

    /// Block the inference thread until there is work; `None` once the store has stopped.
    pub fn next_task(&self) -> Option<Task> {
        let mut g = self.lock();
        loop {
            if let Some(task) = g.queue.pop_front() {
                if let Task::Job { id, .. } = &task {
                    let id = id.clone();
                    g.running = Some(id.clone());
                    if let Some(e) = g.jobs.get_mut(&id) {
                        e.view.status = JobStatus::Running;
                        e.view.queue_position = None;
                        e.started = Some(Instant::now());
                        e.tx.send_modify(|v| *v += 1);
                    }
                    Self::renumber(&mut g);
                }
                return Some(task);
            }
            if g.stopped {
                return None;
            }
            g = self.wake.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn renumber(g: &mut Inner) {
        let ids: Vec<JobId> = g
            .queue
            .iter()
            .filter_map(|t| match t {
                Task::Job { id, .. } => Some(id.clone()),
                Task::Load { .. } => None,
            })
            .collect();
        for (pos, id) in ids.iter().enumerate() {
            if let Some(e) = g.jobs.get_mut(id) {
                if e.view.queue_position != Some(pos) {
                    e.view.queue_position = Some(pos);
                    e.tx.send_modify(|v| *v += 1);
                }
            }
        }
    }

    /// The running job's progress (the inference thread, after each step).
    pub fn set_progress(&self, id: &JobId, mut progress: Progress) {
        let mut g = self.lock();
        if let Some(e) = g.jobs.get_mut(id) {
            progress.elapsed_s = e.started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
            if progress.preview.is_none() && progress.preview_step == 0 {
                // Keep the last preview until a newer one arrives.
                progress.preview = e.view.progress.preview.take();
                progress.preview_step = e.view.progress.preview_step;
            }
            e.view.progress = progress;
            e.tx.send_modify(|v| *v += 1);
        }
    }

    /// Record a job's end.
    pub fn finish(&self, id: &JobId, outcome: Result<JobResult, String>) {
        let mut g = self.lock();
        if g.running.as_ref() == Some(id) {
            g.running = None;
        }
        let Some(e) = g.jobs.get_mut(id) else { return };
        let cancelled = e.control.cancel.load(Ordering::SeqCst);
        match outcome {
            _ if cancelled => {
                e.view.status = JobStatus::Cancelled;
                e.view.error = Some("cancelled".into());
            }
            Ok(r) => {
                e.view.status = JobStatus::Done;
                e.view.result = Some(r);
            }
            Err(msg) => {
                e.view.status = JobStatus::Failed;
                e.view.error = Some(msg);
            }
        }
        e.view.progress.elapsed_s = e.started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
        e.view.progress.preview = None;
        e.view.queue_position = None;
        e.finished = Some(Instant::now());
        e.tx.send_modify(|v| *v += 1);
        g.finished.push_back(id.clone());
    }

    /// Cancel a job: a queued one leaves the queue, a running one stops at its next step and returns no images.
    /// `None` when there is no such job.
    pub fn cancel(&self, id: &JobId) -> Option<JobStatus> {
        let mut g = self.lock();
        let status = g.jobs.get(id)?.view.status;
        match status {
            JobStatus::Queued => {
                g.queue.retain(|t| !matches!(t, Task::Job { id: q, .. } if q == id));
                if let Some(e) = g.jobs.get_mut(id) {
                    e.control.cancel.store(true, Ordering::SeqCst);
                    e.view.status = JobStatus::Cancelled;
                    e.view.error = Some("cancelled".into());
                    e.view.queue_position = None;
                    e.finished = Some(Instant::now());
                    e.tx.send_modify(|v| *v += 1);
                }
                g.finished.push_back(id.clone());
                Self::renumber(&mut g);
                Some(JobStatus::Cancelled)
            }
            JobStatus::Running => {
                if let Some(e) = g.jobs.get(id) {
                    e.control.cancel.store(true, Ordering::SeqCst);
                    e.control.interrupt.store(true, Ordering::SeqCst);
                }
                Some(JobStatus::Running)
            }
            s => Some(s),
        }
    }

    /// A1111 `/interrupt` and `/skip` act on whatever runs now; `false` when nothing runs.
    pub fn signal_running(&self, skip: bool) -> bool {
        let g = self.lock();
        let Some(id) = &g.running else { return false };
        let Some(e) = g.jobs.get(id) else { return false };
        if skip {
            e.control.skip.store(true, Ordering::SeqCst);
        } else {
            e.control.interrupt.store(true, Ordering::SeqCst);
        }
        true
    }

    /// Remove a finished job (no-op for a job still queued or running).
    pub fn forget(&self, id: &JobId) {
        let mut g = self.lock();
        if g.jobs.get(id).is_some_and(|e| e.view.status.is_final()) {
            g.jobs.remove(id);
            g.finished.retain(|f| f != id);
        }
    }

    pub fn view(&self, id: &JobId) -> Option<JobView> {
        self.lock().jobs.get(id).map(|e| e.view.clone())
    }

    /// The running job, for A1111's `/progress`.
    pub fn running(&self) -> Option<JobView> {
        let g = self.lock();
        g.running.as_ref().and_then(|id| g.jobs.get(id)).map(|e| e.view.clone())
    }

    /// Jobs waiting (not counting the running one).
    pub fn queue_depth(&self) -> usize {
        self.lock().queue.iter().filter(|t| matches!(t, Task::Job { .. })).count()
    }

    pub fn subscribe(&self, id: &JobId) -> Option<watch::Receiver<u64>> {
        self.lock().jobs.get(id).map(|e| e.tx.subscribe())
    }

    /// Wait until the job has finished and return its final view.
    pub async fn wait(&self, id: &JobId) -> Option<JobView> {
        let mut rx = self.subscribe(id)?;
        loop {
            let view = self.view(id)?;
            if view.status.is_final() {
                return Some(view);
            }
            if rx.changed().await.is_err() {
                return self.view(id);
            }
        }
    }

    /// Stop taking work: new jobs are refused and queued jobs are cancelled; the running one continues.
    pub fn begin_shutdown(&self) {
        let mut g = self.lock();
        g.shutting_down = true;
        let queued: Vec<Task> = g.queue.drain(..).collect();
        for t in queued {
            match t {
                Task::Job { id, control, .. } => {
                    control.cancel.store(true, Ordering::SeqCst);
                    if let Some(e) = g.jobs.get_mut(&id) {
                        e.view.status = JobStatus::Cancelled;
                        e.view.error = Some("cancelled: the server is shutting down".into());
                        e.view.queue_position = None;
                        e.finished = Some(Instant::now());
                        e.tx.send_modify(|v| *v += 1);
                    }
                    g.finished.push_back(id);
                }
                Task::Load { reply, .. } => {
                    let _ = reply.send(Err("the server is shutting down".into()));
                }
            }
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// Let the inference thread exit once the queue is empty.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_all();
    }

    /// Forget finished jobs beyond the count limit or older than the TTL.
    fn evict(&self, g: &mut Inner) {
        while let Some(id) = g.finished.front().cloned() {
            let expired = g.jobs.get(&id).and_then(|e| e.finished).is_none_or(|t| t.elapsed() > self.ttl);
            if g.finished.len() > self.max_finished || expired {
                g.finished.pop_front();
                g.jobs.remove(&id);
            } else {
                break;
            }
        }
    }
}
