//! Prometheus metrics for `GET /metrics`: queue depth, jobs by outcome, job and step latency, model load time,
//! HTTP responses by status class.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

pub struct Metrics {
    registry: Registry,
    pub queue_depth: Gauge,
    pub jobs: Family<Vec<(String, String)>, Counter>,
    pub job_seconds: Histogram,
    pub step_seconds: Histogram,
    pub model_load_seconds: Gauge<f64, AtomicU64>,
    pub http_responses: Family<Vec<(String, String)>, Counter>,
    pub images: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sd");
        let queue_depth = Gauge::default();
        let jobs = Family::<Vec<(String, String)>, Counter>::default();
        let job_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 16));
        let step_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let model_load_seconds = Gauge::<f64, AtomicU64>::default();
        let http_responses = Family::<Vec<(String, String)>, Counter>::default();
        let images = Counter::default();
        registry.register("queue_depth", "Jobs waiting behind the running one", queue_depth.clone());
        registry.register("jobs", "Finished jobs by outcome (done, failed, cancelled, interrupted)", jobs.clone());
        registry.register(
            "job_seconds",
            "Time from a job's start to its end on the inference thread",
            job_seconds.clone(),
        );
        registry.register(
            "step_seconds",
            "Time of one sampler step (UNet passes and the sampler update)",
            step_seconds.clone(),
        );
        registry.register("model_load_seconds", "Time the last model load took", model_load_seconds.clone());
        registry.register("http_responses", "HTTP responses by status class", http_responses.clone());
        registry.register("images", "Images returned", images.clone());
        Self { registry, queue_depth, jobs, job_seconds, step_seconds, model_load_seconds, http_responses, images }
    }
}

impl Metrics {
    pub fn job_finished(&self, outcome: &str) {
        self.jobs.get_or_create(&vec![("outcome".to_string(), outcome.to_string())]).inc();
    }

    pub fn http_response(&self, status: u16) {
        let class = format!("{}xx", status / 100);
        self.http_responses.get_or_create(&vec![("class".to_string(), class)]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Append the Redis queue's figures (read at scrape time, from Redis itself, so every front end reports the same)
/// to an exposition from [`Metrics::render`].
pub fn with_queue_stats(text: String, s: &crate::redis_queue::QueueStats) -> String {
    use std::fmt::Write;
    let body = text.strip_suffix("# EOF\n").unwrap_or(&text).to_string();
    let mut out = body;
    let mut gauge = |name: &str, help: &str, rows: Vec<(Option<String>, f64)>| {
        let _ = writeln!(out, "# HELP sd_{name} {help}\n# TYPE sd_{name} gauge");
        for (label, v) in rows {
            match label {
                Some(w) => {
                    let w = w.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                    let _ = writeln!(out, "sd_{name}{{worker=\"{w}\"}} {v}");
                }
                None => {
                    let _ = writeln!(out, "sd_{name} {v}");
                }
            }
        }
    };
    gauge(
        "redis_stream_length",
        "Entries in the job stream (acknowledged ones until trimmed)",
        vec![(None, s.length as f64)],
    );
    gauge("redis_queue_lag", "Jobs no worker has claimed yet", vec![(None, s.lag as f64)]);
    gauge("redis_queue_pending", "Jobs claimed by a worker and not yet acknowledged", vec![(None, s.pending as f64)]);
    gauge(
        "redis_queue_oldest_pending_age_seconds",
        "Age of the oldest claimed, unacknowledged job",
        vec![(None, s.oldest_pending_age_s)],
    );
    gauge("redis_dead_letters", "Jobs in the dead-letter stream", vec![(None, s.dead as f64)]);
    gauge(
        "worker_jobs",
        "Jobs each worker has finished (per-worker throughput: rate of this)",
        s.worker_jobs.iter().map(|(w, n)| (Some(w.clone()), *n as f64)).collect(),
    );
    gauge(
        "worker_last_seen_timestamp_seconds",
        "When each worker last asked for work",
        s.workers_seen.iter().map(|(w, t)| (Some(w.clone()), *t)).collect(),
    );
    out.push_str("# EOF\n");
    out
}
