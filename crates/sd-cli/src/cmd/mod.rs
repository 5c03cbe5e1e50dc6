//! One file per subcommand.

pub mod c2pa;
pub mod control_args;
pub mod convert;
pub mod doctor;
pub mod generate;
pub mod generate_sd3;
pub mod inspect;
pub mod ip_adapter_args;
pub mod model_args;
pub mod refine;
pub mod samplers;
pub mod serve;
pub mod tokenize;
pub mod train;
pub mod worker;

/// An error caused by how the command was called (bad flag values, impossible combinations): exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Return a usage error (exit code 2) from a subcommand.
#[allow(unused_macros)]
macro_rules! usage {
    ($($arg:tt)*) => { return Err(anyhow::Error::new($crate::cmd::UsageError(format!($($arg)*)))) };
}
#[allow(unused_imports)]
pub(crate) use usage;
