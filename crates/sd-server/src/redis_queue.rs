//! Scale-out on Redis Streams: `sd serve --queue redis://…` front ends enqueue jobs on a stream with a consumer
//! group, and any number of `sd worker` processes claim, run and acknowledge them.
//!
//! Layout (every key under `sd:`):
//! - `sd:jobs`: the stream; each entry names one job id. Consumer group `sd-workers`.
//! - `sd:job:{id}`: a hash per job: `request` (JSON), `status`, `progress` (JSON), `result` (JSON), `error`,
//!   `created`, `attempts`, `worker`, `control` (`interrupt` / `skip` / `cancel`, set by front ends).
//! - `sd:running`: ids being run now (A1111 `/progress` and `/interrupt`).
//! - `sd:dead`: the dead-letter stream: jobs that failed `max_attempts` times, with their last error.
//! - `sd:workers`: worker name → last heartbeat (Unix seconds); `sd:worker_jobs`: worker name → jobs finished.
//! - `sd:selected_model`: the model `POST /sdapi/v1/options` chose, shared by every front end.
//!
//! Delivery: a worker acknowledges an entry only after the job's final state is stored. An entry left pending by a
//! dead worker is reclaimed with XAUTOCLAIM once idle for the visibility timeout; a running worker keeps its entry
//! fresh with XCLAIM (JUSTID) while it works. Attempts are counted at every claim, so a job that kills its workers
//! is dead-lettered too. The final write is a script that only writes when no final state is stored yet: when two
//! workers finish the same job (a reclaim of a worker that was only slow), the first result stands and the job is
//! returned once.

use crate::engine::Engine;
use crate::job::{JobId, JobRequest, JobResult, JobStatus, JobView, Progress};
use crate::store::{unix_now, Control, SubmitError};
use anyhow::{anyhow, Context, Result};
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const STREAM: &str = "sd:jobs";
pub const GROUP: &str = "sd-workers";
pub const DEAD: &str = "sd:dead";
pub const RUNNING: &str = "sd:running";
pub const WORKERS: &str = "sd:workers";
pub const WORKER_JOBS: &str = "sd:worker_jobs";
pub const SELECTED_MODEL: &str = "sd:selected_model";
/// The stream is trimmed to about this many entries (acknowledged entries are history only).
pub const STREAM_MAX_LEN: usize = 100_000;
/// Queued jobs expire after this long if no worker ever takes them.
pub const QUEUED_TTL_S: u64 = 7 * 24 * 3600;

pub fn job_key(id: &JobId) -> String {
    format!("sd:job:{id}")
}

/// Create the consumer group (and the stream) if missing; entries added before it existed are delivered too.
async fn ensure_group(con: &mut redis::aio::ConnectionManager) -> Result<()> {
    let r: redis::RedisResult<()> =
        redis::cmd("XGROUP").arg("CREATE").arg(STREAM).arg(GROUP).arg("0").arg("MKSTREAM").query_async(con).await;
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e).context("cannot create the Redis consumer group"),
    }
}

fn ensure_group_sync(con: &mut redis::Connection) -> Result<()> {
    let r: redis::RedisResult<()> =
        redis::cmd("XGROUP").arg("CREATE").arg(STREAM).arg(GROUP).arg("0").arg("MKSTREAM").query(con);
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e).context("cannot create the Redis consumer group"),
    }
}

/// A job's hash as a [`JobView`].
fn view_from_hash(id: &JobId, h: &HashMap<String, String>) -> Option<JobView> {
    let request: JobRequest = serde_json::from_str(h.get("request")?).ok()?;
    let status = match h.get("status").map(String::as_str) {
        Some("queued") => JobStatus::Queued,
        Some("running") => JobStatus::Running,
        Some("done") => JobStatus::Done,
        Some("failed") => JobStatus::Failed,
        Some("cancelled") => JobStatus::Cancelled,
        _ => return None,
    };
    let progress: Progress = h.get("progress").and_then(|p| serde_json::from_str(p).ok()).unwrap_or_default();
    let result: Option<JobResult> = h.get("result").and_then(|r| serde_json::from_str(r).ok());
    Some(JobView {
        id: id.clone(),
        status,
        request,
        progress,
        result,
        error: h.get("error").filter(|e| !e.is_empty()).cloned(),
        created: h.get("created").and_then(|c| c.parse().ok()).unwrap_or(0.0),
        queue_position: None,
        worker: h.get("worker").cloned(),
    })
}

/// Atomically: a queued job becomes cancelled; a running one gets the `cancel` control; returns the old status.
const CANCEL_SCRIPT: &str = r"
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return false end
if s == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'error', 'cancelled', 'control', 'cancel')
  redis.call('EXPIRE', KEYS[1], ARGV[1])
elseif s == 'running' then
  redis.call('HSET', KEYS[1], 'control', 'cancel')
end
return s
";

/// Store a final state unless one is stored already (the first finisher wins); returns 1 when written.
const FINISH_SCRIPT: &str = r"
local s = redis.call('HGET', KEYS[1], 'status')
if s == 'done' or s == 'failed' or s == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'error', ARGV[3], 'progress', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
";

/// The front end's side: submit, read, wait, cancel, signal; all state lives in Redis, so any number of front ends
/// serve the same jobs and a restarted one answers for jobs submitted before.
pub struct RedisQueue {
    con: redis::aio::ConnectionManager,
    pub url: String,
    max_queue: usize,
    ttl_s: u64,
    shutting_down: AtomicBool,
}

/// Queue figures for `/metrics`.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub length: u64,
    pub lag: u64,
    pub pending: u64,
    pub oldest_pending_age_s: f64,
    pub dead: u64,
    pub worker_jobs: Vec<(String, u64)>,
    pub workers_seen: Vec<(String, f64)>,
}

impl RedisQueue {
    pub async fn connect(url: &str, max_queue: usize, ttl: Duration) -> Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("--queue {url}: not a Redis URL"))?;
        let mut con = tokio::time::timeout(Duration::from_secs(10), client.get_connection_manager())
            .await
            .map_err(|_| anyhow!("cannot reach Redis at {url} within 10 s"))?
            .with_context(|| format!("cannot connect to Redis at {url}"))?;
        ensure_group(&mut con).await?;
        Ok(Self {
            con,
            url: url.to_string(),
            max_queue,
            ttl_s: ttl.as_secs().max(1),
            shutting_down: AtomicBool::new(false),
        })
    }

    fn con(&self) -> redis::aio::ConnectionManager {
        self.con.clone()
    }

    /// Jobs not yet delivered to any worker (the consumer group's lag).
    pub async fn depth(&self) -> redis::RedisResult<u64> {
        let groups: Vec<HashMap<String, redis::Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg(STREAM).query_async(&mut self.con()).await?;
        let g = groups.iter().find(|g| {
            g.get("name").and_then(|v| redis::from_redis_value_ref::<String>(v).ok()).as_deref() == Some(GROUP)
        });
        let lag = g.and_then(|g| g.get("lag")).and_then(|v| redis::from_redis_value_ref::<u64>(v).ok());
        match lag {
            Some(l) => Ok(l),
            // Redis reports no lag after some trims; fall back to counting queued jobs' entries.
            None => {
                let len: u64 = self.con().xlen(STREAM).await?;
                let pending: u64 = g
                    .and_then(|g| g.get("pending"))
                    .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                    .unwrap_or(0);
                Ok(len.saturating_sub(pending))
            }
        }
    }

    pub async fn submit(&self, request: JobRequest) -> Result<JobId, SubmitError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let depth = self.depth().await.map_err(|e| SubmitError::Unavailable(e.to_string()))?;
        if depth >= self.max_queue as u64 {
            return Err(SubmitError::QueueFull { limit: self.max_queue });
        }
        let id = JobId::new();
        let key = job_key(&id);
        let json = serde_json::to_string(&request).map_err(|e| SubmitError::Unavailable(e.to_string()))?;
        let progress = serde_json::to_string(&Progress { batches: request.n_iter, ..Default::default() })
            .map_err(|e| SubmitError::Unavailable(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("request", json.as_str()),
                    ("status", "queued"),
                    ("progress", progress.as_str()),
                    ("created", &unix_now().to_string()),
                    ("attempts", "0"),
                ],
            )
            .ignore()
            .expire(&key, QUEUED_TTL_S as i64)
            .ignore()
            .cmd("XADD")
            .arg(STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAX_LEN)
            .arg("*")
            .arg("id")
            .arg(&id.0)
            .ignore();
        pipe.query_async::<()>(&mut self.con()).await.map_err(|e| SubmitError::Unavailable(e.to_string()))?;
        Ok(id)
    }

    pub async fn view(&self, id: &JobId) -> redis::RedisResult<Option<JobView>> {
        let h: HashMap<String, String> = self.con().hgetall(job_key(id)).await?;
        Ok(view_from_hash(id, &h))
    }

    /// Delete a finished job's hash (its result was delivered synchronously).
    pub async fn forget(&self, id: &JobId) -> redis::RedisResult<()> {
        let v = self.view(id).await?;
        if v.is_some_and(|v| v.status.is_final()) {
            let _: () = self.con().del(job_key(id)).await?;
        }
        Ok(())
    }

    pub async fn cancel(&self, id: &JobId) -> redis::RedisResult<Option<JobStatus>> {
        let s: Option<String> =
            redis::Script::new(CANCEL_SCRIPT).key(job_key(id)).arg(self.ttl_s).invoke_async(&mut self.con()).await?;
        Ok(s.map(|s| match s.as_str() {
            "queued" => JobStatus::Cancelled,
            "running" => JobStatus::Running,
            "done" => JobStatus::Done,
            "failed" => JobStatus::Failed,
            _ => JobStatus::Cancelled,
        }))
    }

    /// A1111 `/interrupt` and `/skip`: every job running anywhere (A1111 has one user; here, whoever runs now).
    pub async fn signal_running(&self, skip: bool) -> redis::RedisResult<bool> {
        let ids: Vec<String> = self.con().smembers(RUNNING).await?;
        for id in &ids {
            let _: () =
                self.con().hset(format!("sd:job:{id}"), "control", if skip { "skip" } else { "interrupt" }).await?;
        }
        Ok(!ids.is_empty())
    }

    pub async fn running(&self) -> redis::RedisResult<Option<JobView>> {
        let ids: Vec<String> = self.con().smembers(RUNNING).await?;
        for id in ids {
            if let Some(id) = JobId::parse(&id) {
                if let Some(v) = self.view(&id).await? {
                    return Ok(Some(v));
                }
            }
        }
        Ok(None)
    }

    pub async fn selected_model(&self) -> redis::RedisResult<Option<String>> {
        self.con().get(SELECTED_MODEL).await
    }

    pub async fn select_model(&self, name: &str) -> redis::RedisResult<()> {
        self.con().set(SELECTED_MODEL, name).await
    }

    pub async fn ping(&self) -> bool {
        redis::cmd("PING").query_async::<String>(&mut self.con()).await.is_ok()
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub async fn stats(&self) -> redis::RedisResult<QueueStats> {
        let mut con = self.con();
        let mut s = QueueStats { length: con.xlen(STREAM).await?, lag: self.depth().await?, ..Default::default() };
        // XPENDING summary: [count, smallest id, greatest id, consumers]
        let summary: redis::Value = redis::cmd("XPENDING").arg(STREAM).arg(GROUP).query_async(&mut con).await?;
        if let redis::Value::Array(items) = summary {
            s.pending = items.first().and_then(|v| redis::from_redis_value_ref::<u64>(v).ok()).unwrap_or(0);
            if let Some(oldest) = items.get(1).and_then(|v| redis::from_redis_value_ref::<String>(v).ok()) {
                // Entry ids start with their creation time in milliseconds.
                if let Some(ms) = oldest.split('-').next().and_then(|m| m.parse::<f64>().ok()) {
                    s.oldest_pending_age_s = (unix_now() - ms / 1000.0).max(0.0);
                }
            }
        }
        s.dead = con.xlen(DEAD).await?;
        let jobs: HashMap<String, u64> = con.hgetall(WORKER_JOBS).await?;
        s.worker_jobs = jobs.into_iter().collect();
        s.worker_jobs.sort();
        let seen: HashMap<String, f64> = con.hgetall(WORKERS).await?;
        s.workers_seen = seen.into_iter().collect();
        s.workers_seen.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(s)
    }
}

/// How a worker behaves.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub url: String,
    /// Consumer name in the group; unique per worker process.
    pub name: String,
    /// A pending entry idle this long belongs to a dead worker and is reclaimed.
    pub visibility: Duration,
    /// Claims of one job before it is dead-lettered.
    pub max_attempts: u32,
    /// How long finished jobs stay readable.
    pub result_ttl: Duration,
    /// After a stop request, how long the running job may continue before it is interrupted.
    pub shutdown_timeout: Duration,
}

/// The worker loop: claim (reclaiming stale entries first), run, store, acknowledge; until `stop` is raised.
pub fn run_worker(cfg: &WorkerConfig, mut engine: Engine, stop: Arc<AtomicBool>) -> Result<()> {
    let client =
        redis::Client::open(cfg.url.as_str()).with_context(|| format!("--queue {}: not a Redis URL", cfg.url))?;
    let mut con = connect_sync(&client)?;
    ensure_group_sync(&mut con)?;
    if !engine.load_initial() {
        anyhow::bail!("the worker's model could not be loaded (see the log above)");
    }
    tracing::info!(worker = %cfg.name, queue = %cfg.url, "worker ready");
    while !stop.load(Ordering::SeqCst) {
        let _: redis::RedisResult<()> = redis::cmd("HSET").arg(WORKERS).arg(&cfg.name).arg(unix_now()).query(&mut con);
        let entry = match next_entry(&mut con, cfg) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("Redis error while waiting for work: {e}; reconnecting");
                std::thread::sleep(Duration::from_secs(1));
                if let Ok(c) = connect_sync(&client) {
                    con = c;
                }
                continue;
            }
        };
        let Some((entry_id, job_id)) = entry else { continue };
        if let Err(e) = handle(&mut con, cfg, &mut engine, &entry_id, &job_id, &stop) {
            // Left unacknowledged: another worker reclaims it after the visibility timeout.
            tracing::error!(job = %job_id, "Redis error while handling a job: {e:#}");
        }
    }
    let _: redis::RedisResult<()> = redis::cmd("HDEL").arg(WORKERS).arg(&cfg.name).query(&mut con);
    tracing::info!(worker = %cfg.name, "worker stopped");
    Ok(())
}

fn connect_sync(client: &redis::Client) -> Result<redis::Connection> {
    let con = client.get_connection_with_timeout(Duration::from_secs(10)).context("cannot connect to Redis")?;
    Ok(con)
}

/// A stale entry of a dead worker if there is one, else a new entry (blocking up to a second).
fn next_entry(con: &mut redis::Connection, cfg: &WorkerConfig) -> redis::RedisResult<Option<(String, JobId)>> {
    let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(STREAM)
        .arg(GROUP)
        .arg(&cfg.name)
        .arg(cfg.visibility.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(1)
        .query(con)?;
    let mut ids = claimed.claimed;
    if ids.is_empty() {
        let read: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&cfg.name)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(">")
            .query(con)?;
        ids = read.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default();
    } else {
        tracing::warn!(worker = %cfg.name, entry = %ids[0].id, "reclaimed a job whose worker stopped answering");
    }
    Ok(ids.into_iter().next().and_then(|e| {
        let job: Option<String> = e.get("id");
        match job.as_deref().and_then(JobId::parse) {
            Some(j) => Some((e.id, j)),
            None => {
                // Not ours: acknowledge so it is not redelivered forever.
                let _: redis::RedisResult<()> = redis::cmd("XACK").arg(STREAM).arg(GROUP).arg(&e.id).query(con);
                None
            }
        }
    }))
}

fn ack(con: &mut redis::Connection, entry: &str) -> redis::RedisResult<()> {
    redis::cmd("XACK").arg(STREAM).arg(GROUP).arg(entry).query(con)
}

fn finish(
    con: &mut redis::Connection,
    key: &str,
    status: &str,
    result: Option<&JobResult>,
    error: &str,
    progress: &Progress,
    ttl: Duration,
) -> Result<bool> {
    let result = match result {
        Some(r) => serde_json::to_string(r)?,
        None => String::new(),
    };
    let written: i64 = redis::Script::new(FINISH_SCRIPT)
        .key(key)
        .arg(status)
        .arg(result)
        .arg(error)
        .arg(serde_json::to_string(progress)?)
        .arg(ttl.as_secs().max(1))
        .invoke(con)?;
    Ok(written == 1)
}

fn handle(
    con: &mut redis::Connection,
    cfg: &WorkerConfig,
    engine: &mut Engine,
    entry: &str,
    id: &JobId,
    stop: &AtomicBool,
) -> Result<()> {
    let key = job_key(id);
    let h: HashMap<String, String> = redis::cmd("HGETALL").arg(&key).query(con)?;
    let Some(view) = view_from_hash(id, &h) else {
        // Expired or never written: nothing to run.
        ack(con, entry)?;
        return Ok(());
    };
    if view.status.is_final() {
        // Cancelled while queued, or finished by another worker (duplicate delivery).
        ack(con, entry)?;
        return Ok(());
    }
    let attempts: u32 = redis::cmd("HINCRBY").arg(&key).arg("attempts").arg(1).query(con)?;
    if attempts > cfg.max_attempts {
        let last =
            h.get("last_error").cloned().unwrap_or_else(|| "the worker running it stopped (crash or kill)".into());
        dead_letter(con, cfg, &key, id, attempts - 1, &last, &view.progress)?;
        ack(con, entry)?;
        return Ok(());
    }
    redis::pipe()
        .hset_multiple(&key, &[("status", "running"), ("worker", cfg.name.as_str()), ("control", "")])
        .ignore()
        .sadd(RUNNING, &id.0)
        .ignore()
        .query::<()>(con)?;
    tracing::info!(job = %id, attempt = attempts, "running job");

    let control = Control::default();
    let mut last_poll = Instant::now();
    let mut last_progress = Progress::default();
    let started = Instant::now();
    let mut redis_error: Option<redis::RedisError> = None;
    let outcome = {
        let mut on_progress = |p: Progress| {
            let mut p = p;
            p.elapsed_s = started.elapsed().as_secs_f64();
            last_progress = Progress { preview: None, ..p.clone() };
            let json = serde_json::to_string(&p).unwrap_or_default();
            let mut pipe = redis::pipe();
            pipe.hset(&key, "progress", json).ignore();
            // Stay the owner of the entry while working (XAUTOCLAIM only takes entries idle past the timeout).
            if last_poll.elapsed() >= Duration::from_millis(250) {
                pipe.cmd("XCLAIM").arg(STREAM).arg(GROUP).arg(&cfg.name).arg(0).arg(entry).arg("JUSTID").ignore();
                pipe.hget(&key, "control");
                last_poll = Instant::now();
                match pipe.query::<Vec<Option<String>>>(con) {
                    Ok(v) => match v.first().and_then(|c| c.as_deref()) {
                        Some("interrupt") => control.interrupt.store(true, Ordering::SeqCst),
                        Some("skip") => control.skip.store(true, Ordering::SeqCst),
                        Some("cancel") => {
                            control.cancel.store(true, Ordering::SeqCst);
                            control.interrupt.store(true, Ordering::SeqCst);
                        }
                        _ => {}
                    },
                    Err(e) => redis_error = Some(e),
                }
                if stop.load(Ordering::SeqCst) && started.elapsed() > cfg.shutdown_timeout {
                    control.interrupt.store(true, Ordering::SeqCst);
                }
                if control.skip.load(Ordering::SeqCst) {
                    // A skip acts once, on the batch running now.
                    let _: redis::RedisResult<()> = redis::cmd("HSET").arg(&key).arg("control").arg("").query(con);
                }
            } else if let Err(e) = pipe.query::<()>(con) {
                redis_error = Some(e);
            }
        };
        engine.execute(id, &view.request, &control, &mut on_progress)
    };
    if let Some(e) = redis_error {
        tracing::warn!(job = %id, "Redis error during the job (progress may be stale): {e}");
    }
    let _: redis::RedisResult<()> = redis::cmd("SREM").arg(RUNNING).arg(&id.0).query(con);
    let mut done_progress = last_progress;
    done_progress.elapsed_s = started.elapsed().as_secs_f64();
    match outcome {
        _ if control.cancel.load(Ordering::SeqCst) => {
            finish(con, &key, "cancelled", None, "cancelled", &done_progress, cfg.result_ttl)?;
        }
        Ok(result) => {
            if finish(con, &key, "done", Some(&result), "", &done_progress, cfg.result_ttl)? {
                let _: redis::RedisResult<()> = redis::cmd("HINCRBY").arg(WORKER_JOBS).arg(&cfg.name).arg(1).query(con);
            } else {
                tracing::warn!(job = %id, "another worker stored this job's result first; this one is dropped");
            }
        }
        Err(error) => {
            if attempts >= cfg.max_attempts {
                dead_letter(con, cfg, &key, id, attempts, &error, &done_progress)?;
            } else {
                // Retry at once on whichever worker claims it next.
                redis::pipe()
                    .atomic()
                    .hset_multiple(&key, &[("status", "queued"), ("last_error", error.as_str())])
                    .ignore()
                    .cmd("XADD")
                    .arg(STREAM)
                    .arg("*")
                    .arg("id")
                    .arg(&id.0)
                    .ignore()
                    .query::<()>(con)?;
                tracing::warn!(job = %id, attempt = attempts, "job failed, queued again: {error}");
            }
        }
    }
    ack(con, entry)?;
    Ok(())
}

fn dead_letter(
    con: &mut redis::Connection,
    cfg: &WorkerConfig,
    key: &str,
    id: &JobId,
    attempts: u32,
    error: &str,
    progress: &Progress,
) -> Result<()> {
    let msg =
        format!("failed {attempts} time(s), the limit (--max-attempts {}); last error: {error}", cfg.max_attempts);
    redis::cmd("XADD")
        .arg(DEAD)
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_MAX_LEN)
        .arg("*")
        .arg("id")
        .arg(&id.0)
        .arg("error")
        .arg(error)
        .arg("attempts")
        .arg(attempts)
        .query::<()>(con)?;
    finish(con, key, "failed", None, &msg, progress, cfg.result_ttl)?;
    tracing::error!(job = %id, "dead-lettered: {msg}");
    Ok(())
}
