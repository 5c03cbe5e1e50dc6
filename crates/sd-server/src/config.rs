//! What an operator sets when starting `sd serve`: where to listen, who may call, and how much one request may ask
//! for. Every bound is named here so an error can quote it.

use anyhow::{bail, Result};
use sd_core::limits;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Upper bounds on what one request may ask for, checked before any memory is spent on it. The defaults are the
/// `SERVE_*` constants of [`sd_core::limits`], where every bound sd-rs applies is named with its reason.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Limits {
    /// Bytes of one HTTP body (JSON with base64 images, or a multipart form).
    pub max_body_bytes: usize,
    /// Output width × height in pixels.
    pub max_pixels: u64,
    /// Sampler steps per batch.
    pub max_steps: usize,
    /// Images drawn together (`batch_size`).
    pub max_batch_size: i64,
    /// Batches one after the other (`n_iter`).
    pub max_n_iter: u32,
    /// Width × height of an uploaded image, read from its header before it is decoded.
    pub max_input_pixels: u64,
    /// Characters of a prompt or negative prompt.
    pub max_prompt_chars: usize,
    /// Jobs waiting behind the running one; a full queue answers 429 with `Retry-After`.
    pub max_queue: usize,
    /// Finished jobs kept for `GET /v1/jobs/{id}`; older ones are forgotten first.
    pub max_finished_jobs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: limits::SERVE_MAX_BODY_BYTES as usize,
            max_pixels: limits::SERVE_MAX_PIXELS,
            max_steps: limits::SERVE_MAX_STEPS as usize,
            max_batch_size: limits::SERVE_MAX_BATCH as i64,
            max_n_iter: limits::SERVE_MAX_N_ITER as u32,
            max_input_pixels: limits::INPUT_MAX_PIXELS,
            max_prompt_chars: limits::PROMPT_MAX_CHARS as usize,
            max_queue: limits::SERVE_MAX_QUEUE as usize,
            max_finished_jobs: limits::SERVE_MAX_FINISHED_JOBS as usize,
        }
    }
}

/// How the HTTP side of `sd serve` behaves.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: IpAddr,
    pub port: u16,
    /// `--api-key`: callers send `Authorization: Bearer KEY` (what the OpenAI clients send).
    pub api_key: Option<String>,
    /// `--api-auth user:pass[,user2:pass2]`: HTTP Basic, as AUTOMATIC1111's flag of the same name.
    pub api_auth: Vec<(String, String)>,
    /// Allow a non-loopback address without authentication.
    pub insecure_no_auth: bool,
    /// Origins allowed by CORS; empty = no CORS headers (browsers then only allow the page we serve).
    pub cors_origins: Vec<String>,
    pub limits: Limits,
    /// After SIGTERM/Ctrl-C, how long the running job may go on before it is interrupted.
    pub shutdown_timeout: Duration,
    /// How long a finished job stays readable.
    pub job_ttl: Duration,
    /// `redis://…`: enqueue jobs on Redis for `sd worker`s instead of running them in this process.
    pub queue: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 7860,
            api_key: None,
            api_auth: Vec::new(),
            insecure_no_auth: false,
            cors_origins: Vec::new(),
            limits: Limits::default(),
            shutdown_timeout: Duration::from_secs(30),
            job_ttl: Duration::from_secs(3600),
            queue: None,
        }
    }
}

impl ServeConfig {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    pub fn auth_enabled(&self) -> bool {
        self.api_key.is_some() || !self.api_auth.is_empty()
    }

    /// Refuse settings that would expose an open image generator to a network by accident.
    pub fn check(&self) -> Result<()> {
        if !self.host.is_loopback() && !self.auth_enabled() && !self.insecure_no_auth {
            bail!(
                "refusing to listen on {} without authentication: anyone who can reach it could use this machine. \
                 Give --api-key KEY or --api-auth USER:PASS, or --insecure-no-auth if a proxy in front does this",
                self.host
            );
        }
        if let Some(k) = &self.api_key {
            if k.len() < 8 {
                bail!("--api-key is {} characters long; use at least 8", k.len());
            }
        }
        let l = &self.limits;
        if l.max_queue == 0 || l.max_steps == 0 || l.max_batch_size < 1 || l.max_n_iter == 0 || l.max_pixels == 0 {
            bail!("server limits must be at least 1");
        }
        Ok(())
    }
}

/// Parse `--api-auth user:pass[,user2:pass2]`.
pub fn parse_api_auth(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((user, pass)) = pair.split_once(':') else {
            bail!("--api-auth expects USER:PASS (comma-separated for several), got {pair:?}");
        };
        if user.is_empty() || pass.is_empty() {
            bail!("--api-auth: user and password must both be non-empty");
        }
        out.push((user.to_string(), pass.to_string()));
    }
    if out.is_empty() {
        bail!("--api-auth expects USER:PASS");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_auth_or_explicit_consent() {
        let mut c = ServeConfig { host: "0.0.0.0".parse().unwrap(), ..Default::default() };
        let err = c.check().unwrap_err().to_string();
        assert!(err.contains("without authentication"), "{err}");
        c.api_key = Some("0123456789".into());
        c.check().unwrap();
        c.api_key = None;
        c.insecure_no_auth = true;
        c.check().unwrap();
        assert!(ServeConfig::default().check().is_ok());
    }

    #[test]
    fn api_auth_pairs() {
        assert_eq!(parse_api_auth("a:b,c:d:e").unwrap(), vec![("a".into(), "b".into()), ("c".into(), "d:e".into())]);
        assert!(parse_api_auth("nopass").is_err());
        assert!(parse_api_auth(":x").is_err());
    }
}
