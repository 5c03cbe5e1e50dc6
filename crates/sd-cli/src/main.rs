//! `sd`: the Stable Diffusion command line. Each subcommand lives in its own file under `cmd/`; this file only
//! parses arguments, runs the command, and turns errors into messages and exit codes
//! (0 ok, 1 runtime error, 2 usage error).

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "sd", version, about = "Stable Diffusion in Rust on LibTorch", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images: txt2img, img2img (--init-image) and inpainting (--mask)
    Generate(Box<cmd::generate::Args>),
    /// Keep a model loaded and serve AUTOMATIC1111's API, OpenAI's images API, a jobs API and a web page
    Serve(Box<cmd::serve::Args>),
    /// Run jobs from a Redis queue filled by `sd serve --queue` front ends
    Worker(Box<cmd::worker::Args>),
    /// Report LibTorch, devices, threads, CPU features and where models are searched for
    Doctor(cmd::doctor::Args),
    /// List the samplers (A1111 names, diffusers classes, schedules)
    Samplers(cmd::samplers::Args),
    /// Convert a single-file checkpoint (.safetensors/.ckpt) into a diffusers folder
    Convert(Box<cmd::convert::Args>),
    /// Show the CLIP token ids and tokens of a prompt, and how much of the 75-token window it uses
    Tokenize(cmd::tokenize::Args),
    /// Show generation parameters, AI labels, C2PA Content Credentials and watermark verdicts of PNG/JPEG/WebP images
    Inspect(cmd::inspect::Args),
    /// Print the root certificate of the local C2PA signing CA (PEM), for others to trust
    C2paRoot(cmd::c2pa::RootArgs),
    /// Fine-tune a model's UNet (or train one from a config) on captioned images
    Train(Box<cmd::train::Args>),
}

/// Let a closed pipe end the process quietly, as it does for other Unix tools (`sd samplers | head`): Rust ignores
/// SIGPIPE, so without this every later write fails and `println!` panics.
#[cfg(unix)]
fn default_sigpipe() {
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: restoring the default disposition of one signal before any thread is started; no handler runs.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

#[cfg(not(unix))]
fn default_sigpipe() {}

fn main() -> ExitCode {
    default_sigpipe();
    sd_core::alloc::reuse_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    quiet_oom_panics();
    // tch's infallible calls panic on LibTorch errors; an out-of-memory one becomes a one-line error here.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(cli.command)));
    let result = match run {
        Ok(r) => r,
        Err(p) => match sd_pipeline::oom::panic_text(p.as_ref()).and_then(sd_pipeline::oom::explain_message) {
            Some(line) => Err(anyhow::anyhow!(line)),
            None => std::panic::resume_unwind(p),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let usage = e.downcast_ref::<cmd::UsageError>().is_some();
            let e = sd_pipeline::oom::with_advice(e);
            eprintln!("error: {e:#}");
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// Out-of-memory panics are reported by `main` as one line; the default hook would print LibTorch's paragraph and a
/// "panicked at" line first. Every other panic keeps the default report.
fn quiet_oom_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let oom = sd_pipeline::oom::panic_text(info.payload()).and_then(sd_pipeline::oom::explain_message);
        if oom.is_none() {
            default(info);
        }
    }));
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Generate(args) => cmd::generate::run(*args),
        Command::Serve(args) => cmd::serve::run(*args),
        Command::Worker(args) => cmd::worker::run(*args),
        Command::Doctor(args) => cmd::doctor::run(args),
        Command::Samplers(args) => cmd::samplers::run(args),
        Command::Convert(args) => cmd::convert::run(*args),
        Command::Tokenize(args) => cmd::tokenize::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Train(args) => cmd::train::run(*args),
        Command::C2paRoot(args) => cmd::c2pa::run_root(args),
    }
}
