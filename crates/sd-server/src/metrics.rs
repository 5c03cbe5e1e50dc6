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
