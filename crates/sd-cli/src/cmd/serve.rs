//! `sd serve`: keep a model loaded and serve AUTOMATIC1111's API, OpenAI's images API, a jobs API and a web page.

use super::model_args::{check_queue_url, check_unit_folders, engine_config, LoadArgs, RenderArgs};
use super::usage;
use anyhow::{Context, Result};
use sd_core::limits;
use sd_server::config::{parse_api_auth, Limits, ServeConfig};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sd serve --model ./stable-diffusion-v1-5                       # http://127.0.0.1:7860, A1111 clients work as-is
  sd serve --model ./sd15 --models-dir ~/models --taesd ./taesd  # switchable models, live previews
  sd serve --model ./sd15 --host 0.0.0.0 --api-key \"$KEY\"        # reachable from the network: authentication required")]
pub struct Args {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub render: RenderArgs,
    #[command(flatten)]
    pub sign: super::c2pa::SignArgs,
    #[command(flatten)]
    pub cache: super::model_args::ServeCacheArgs,
    /// Folder of further models (diffusers folders, .safetensors/.ckpt) clients may switch to
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Address to listen on; anything but loopback needs --api-key or --api-auth (or --insecure-no-auth)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (A1111's 7860 by default; 0 picks a free one and prints it)
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` (what OpenAI clients send); at least 8 characters
    #[arg(long, env = "SD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    // Help as an attribute: in a doc comment rustdoc would read its brackets as intra-doc links.
    #[arg(
        long,
        value_name = "USER:PASS",
        help = "Require HTTP Basic credentials, A1111 style: USER:PASS[,USER2:PASS2]"
    )]
    pub api_auth: Option<String>,
    /// Allow a non-loopback --host without authentication (e.g. behind an authenticating proxy)
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Allow browser pages from this origin to call the API (repeatable; "*" for any)
    #[arg(long)]
    pub cors_origin: Vec<String>,
    /// Folder of ControlNets (diffusers folders, single files) and IP-Adapter files that A1111 ControlNet units
    /// name by folder name or file stem
    #[arg(long, value_name = "DIR")]
    pub controlnet_dir: Option<PathBuf>,
    /// An image encoder folder (CLIPVisionModelWithProjection) for IP-Adapter units, tried before image_encoder/
    /// in --controlnet-dir and in the model folder; repeat for several (a ViT-H and a ViT-bigG): each adapter
    /// takes the first whose output it fits
    #[arg(long, value_name = "DIR")]
    pub ip_encoder: Vec<PathBuf>,
    /// TAESD folder for live previews in /sdapi/v1/progress and the web page (final images use the model's VAE)
    #[arg(long)]
    pub taesd: Option<PathBuf>,
    /// A preview every N steps (with --taesd)
    #[arg(long, default_value_t = 2)]
    pub preview_every: usize,
    /// Jobs that may wait behind the running one; more get 429 with Retry-After
    #[arg(long, default_value_t = Limits::default().max_queue, value_parser = ranged_usize(1, 100_000))]
    pub max_queue: usize,
    /// Most sampler steps per request
    #[arg(long, default_value_t = Limits::default().max_steps, value_parser = ranged_usize(1, limits::GENERATE_MAX_STEPS))]
    pub max_steps: usize,
    /// Most images per batch (batch_size, OpenAI n)
    #[arg(long, default_value_t = Limits::default().max_batch_size,
          value_parser = clap::value_parser!(i64).range(1..=limits::GENERATE_MAX_BATCH as i64))]
    pub max_batch: i64,
    /// Most pixels per generated image (width × height)
    #[arg(long, default_value_t = Limits::default().max_pixels,
          value_parser = clap::value_parser!(u64).range(64..=limits::GENERATE_MAX_SIDE * limits::GENERATE_MAX_SIDE))]
    pub max_pixels: u64,
    /// Most pixels of an uploaded image, checked from its header before decoding
    #[arg(long, default_value_t = Limits::default().max_input_pixels,
          value_parser = clap::value_parser!(u64).range(64..=limits::IMAGE_MAX_SIDE * limits::IMAGE_MAX_SIDE))]
    pub max_input_pixels: u64,
    /// Largest request body in MiB
    #[arg(long, default_value_t = (limits::SERVE_MAX_BODY_BYTES / (1024 * 1024)) as usize, value_parser = ranged_usize(1, 4096))]
    pub max_body_mb: usize,
    /// Seconds the running job may continue after SIGTERM/Ctrl-C before it is interrupted
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Enqueue jobs on Redis (redis://HOST:PORT[/DB]) for `sd worker` processes instead of running them here
    #[arg(long, value_name = "URL")]
    pub queue: Option<String>,
}

/// An operator may raise a server limit up to the hard bound of [`sd_core::limits`], not past it.
fn ranged_usize(lo: u64, hi: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(lo..=hi)
}

pub fn run(args: Args) -> Result<()> {
    init_logging();
    // A front end on a Redis queue renders nothing: its workers sign.
    let sign = if args.queue.is_some() { None } else { args.sign.identity()? };
    let mut engine = engine_config(&args.load, &args.render, args.taesd.as_ref(), args.preview_every, sign)?;
    check_unit_folders(args.controlnet_dir.as_deref(), &args.ip_encoder)?;
    engine.controlnet_dir = args.controlnet_dir.clone();
    engine.cache = args.cache.cache;
    engine.ip_encoders = args.ip_encoder.clone();
    if let Some(q) = &args.queue {
        check_queue_url(q)?;
    }
    if args.preview_every == 0 && args.taesd.is_some() {
        usage!("--preview-every must be at least 1");
    }
    if let Some(t) = &args.taesd {
        if !t.is_dir() {
            usage!("--taesd {}: no such folder", t.display());
        }
    }
    let api_auth = match &args.api_auth {
        Some(s) => parse_api_auth(s).map_err(|e| super::UsageError(format!("{e:#}")))?,
        None => Vec::new(),
    };
    let limits = Limits {
        max_queue: args.max_queue,
        max_steps: args.max_steps,
        max_batch_size: args.max_batch,
        max_pixels: args.max_pixels,
        max_input_pixels: args.max_input_pixels,
        max_body_bytes: args.max_body_mb.saturating_mul(1024 * 1024),
        ..Limits::default()
    };
    let cfg = ServeConfig {
        host: args.host,
        port: args.port,
        api_key: args.api_key.clone(),
        api_auth,
        insecure_no_auth: args.insecure_no_auth,
        cors_origins: args.cors_origin.clone(),
        limits,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        queue: args.queue.clone(),
        ..ServeConfig::default()
    };
    cfg.check().map_err(|e| super::UsageError(format!("{e:#}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let model = args.load.model.clone();
    runtime.block_on(sd_server::serve(
        cfg,
        engine,
        &model,
        args.models_dir.as_deref(),
        sd_server::shutdown_signal(),
        |addr| {
            // Scripts and tests read this line to learn the port (with --port 0).
            println!("sd serve: listening on http://{addr}");
            let _ = std::io::stdout().flush();
        },
    ))
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
