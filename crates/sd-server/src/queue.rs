//! Where the HTTP side sends jobs: the in-process [`Store`] drained by this process's inference thread, or Redis
//! ([`RedisQueue`]) drained by `sd worker` processes. Handlers see one interface; only this file knows both.

use crate::error::ApiError;
use crate::job::{JobId, JobRequest, JobStatus, JobView};
use crate::redis_queue::RedisQueue;
use crate::store::{Store, SubmitError};
use axum::http::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone)]
pub enum Queue {
    Local(Arc<Store>),
    Redis(Arc<RedisQueue>),
}

/// How often a front end on Redis re-reads a job it waits for (the latency a job's end may take to be seen).
const POLL: Duration = Duration::from_millis(25);

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the job queue is unavailable: {e}"));
    err.retry_after = Some(5);
    err
}

/// A handle that wakes an event stream when its job changes.
pub enum Watch {
    Local(watch::Receiver<u64>),
    Poll,
}

impl Queue {
    pub async fn submit(&self, req: JobRequest) -> Result<JobId, SubmitError> {
        match self {
            Queue::Local(s) => s.submit(req),
            Queue::Redis(r) => r.submit(req).await,
        }
    }

    pub async fn view(&self, id: &JobId) -> Result<Option<JobView>, ApiError> {
        match self {
            Queue::Local(s) => Ok(s.view(id)),
            Queue::Redis(r) => r.view(id).await.map_err(unavailable),
        }
    }

    /// Wait for the job's end; `None` if it vanished.
    pub async fn wait(&self, id: &JobId) -> Result<Option<JobView>, ApiError> {
        match self {
            Queue::Local(s) => Ok(s.wait(id).await),
            Queue::Redis(r) => loop {
                match r.view(id).await.map_err(unavailable)? {
                    Some(v) if v.status.is_final() => return Ok(Some(v)),
                    Some(_) => tokio::time::sleep(POLL).await,
                    None => return Ok(None),
                }
            },
        }
    }

    pub async fn cancel(&self, id: &JobId) -> Result<Option<JobStatus>, ApiError> {
        match self {
            Queue::Local(s) => Ok(s.cancel(id)),
            Queue::Redis(r) => r.cancel(id).await.map_err(unavailable),
        }
    }

    pub async fn signal_running(&self, skip: bool) -> Result<bool, ApiError> {
        match self {
            Queue::Local(s) => Ok(s.signal_running(skip)),
            Queue::Redis(r) => r.signal_running(skip).await.map_err(unavailable),
        }
    }

    pub async fn running(&self) -> Result<Option<JobView>, ApiError> {
        match self {
            Queue::Local(s) => Ok(s.running()),
            Queue::Redis(r) => r.running().await.map_err(unavailable),
        }
    }

    pub async fn depth(&self) -> usize {
        match self {
            Queue::Local(s) => s.queue_depth(),
            Queue::Redis(r) => r.depth().await.unwrap_or(0) as usize,
        }
    }

    /// Drop a finished job's record (its result has been delivered).
    pub async fn forget(&self, id: &JobId) {
        match self {
            Queue::Local(s) => s.forget(id),
            Queue::Redis(r) => {
                if let Err(e) = r.forget(id).await {
                    tracing::warn!(job = %id, "cannot delete a delivered job from Redis (it expires anyway): {e}");
                }
            }
        }
    }

    pub fn watch(&self, id: &JobId) -> Option<Watch> {
        match self {
            Queue::Local(s) => s.subscribe(id).map(Watch::Local),
            Queue::Redis(_) => Some(Watch::Poll),
        }
    }

    pub fn begin_shutdown(&self) {
        match self {
            Queue::Local(s) => s.begin_shutdown(),
            Queue::Redis(r) => r.begin_shutdown(),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        match self {
            Queue::Local(s) => s.is_shutting_down(),
            Queue::Redis(r) => r.is_shutting_down(),
        }
    }
}

impl Watch {
    /// Return once the job may have changed.
    pub async fn changed(&mut self) {
        match self {
            Watch::Local(rx) => {
                if rx.changed().await.is_err() {
                    // The job is gone or final: let the caller read it once more without spinning.
                    tokio::time::sleep(POLL).await;
                }
            }
            Watch::Poll => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
