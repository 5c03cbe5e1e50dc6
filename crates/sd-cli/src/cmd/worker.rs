//! `sd worker`: run jobs from a Redis queue that `sd serve --queue` front ends fill; start as many as there are
//! machines (or GPUs) to share the work.

use super::model_args::{check_queue_url, check_unit_folders, engine_config, LoadArgs, RenderArgs};
use super::usage;
use anyhow::{Context, Result};
use sd_server::catalog::Catalog;
use sd_server::engine::{Engine, EngineStatus};
use sd_server::metrics::Metrics;
use sd_server::redis_queue::{run_worker, WorkerConfig};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sd worker --queue redis://127.0.0.1:6379 --model ./stable-diffusion-v1-5
  sd worker --queue redis://queue.internal:6379/0 --model ./sd15 --models-dir /models --name gpu-3")]
pub struct Args {
    /// The Redis queue (redis://HOST:PORT[/DB]) that `sd serve --queue` front ends fill
    #[arg(long, value_name = "URL")]
    pub queue: String,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub render: RenderArgs,
    #[command(flatten)]
    pub sign: super::c2pa::SignArgs,
    #[command(flatten)]
    pub cache: super::model_args::ServeCacheArgs,
    /// Folder of further models jobs may name (as `sd serve --models-dir`)
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// This worker's name in the consumer group (default: host name and process id); unique per worker
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds a claimed job may go without a sign of life before another worker reclaims it
    #[arg(long, default_value_t = 60)]
    pub visibility_timeout: u64,
    /// Claims of one job before it is dead-lettered (to the `sd:dead` stream) with its last error
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Seconds finished jobs stay readable in Redis
    #[arg(long, default_value_t = 3600)]
    pub result_ttl: u64,
    /// Folder of ControlNets (diffusers folders, single files) and IP-Adapter files that A1111 ControlNet units
    /// name by folder name or file stem
    #[arg(long, value_name = "DIR")]
    pub controlnet_dir: Option<PathBuf>,
    /// An image encoder folder (CLIPVisionModelWithProjection) for IP-Adapter units, tried before image_encoder/
    /// in --controlnet-dir and in the model folder; repeat for several (a ViT-H and a ViT-bigG): each adapter
    /// takes the first whose output it fits
    #[arg(long, value_name = "DIR")]
    pub ip_encoder: Vec<PathBuf>,
    /// TAESD folder for live previews
    #[arg(long)]
    pub taesd: Option<PathBuf>,
    /// A preview every N steps (with --taesd)
    #[arg(long, default_value_t = 2)]
    pub preview_every: usize,
    /// Seconds the running job may continue after SIGTERM/Ctrl-C before it is interrupted
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
}

pub fn run(args: Args) -> Result<()> {
    super::serve::init_logging();
    check_queue_url(&args.queue)?;
    if args.visibility_timeout == 0 || args.max_attempts == 0 {
        usage!("--visibility-timeout and --max-attempts must be at least 1");
    }
    let mut engine_cfg =
        engine_config(&args.load, &args.render, args.taesd.as_ref(), args.preview_every, args.sign.identity()?)?;
    check_unit_folders(args.controlnet_dir.as_deref(), &args.ip_encoder)?;
    engine_cfg.controlnet_dir = args.controlnet_dir.clone();
    engine_cfg.cache = args.cache.cache;
    engine_cfg.ip_encoders = args.ip_encoder.clone();
    let catalog = Arc::new(Catalog::scan(&args.load.model, args.models_dir.as_deref())?);
    let engine =
        Engine::new(engine_cfg, catalog, Arc::new(Metrics::default()), Arc::new(Mutex::new(EngineStatus::default())));
    let name = args.name.clone().unwrap_or_else(|| {
        let host =
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    });
    let cfg = WorkerConfig {
        url: args.queue.clone(),
        name,
        visibility: Duration::from_secs(args.visibility_timeout),
        max_attempts: args.max_attempts,
        result_ttl: Duration::from_secs(args.result_ttl),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
    };
    // Signals on a small runtime of their own: the worker loop itself is blocking LibTorch work.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("signal runtime")?;
    std::thread::Builder::new().name("sd-signals".into()).spawn(move || {
        runtime.block_on(sd_server::shutdown_signal());
        tracing::info!("stopping: no new jobs; the running job finishes or is interrupted after --shutdown-timeout");
        flag.store(true, Ordering::SeqCst);
    })?;
    run_worker(&cfg, engine, stop)
}
