//! The binary's side: argument handling, progress bars, output and exit codes.

pub mod args;
pub mod bench_cmd;
pub mod docs_cmd;
pub mod kms_cmd;
pub mod lifecycle;
pub mod merge_cmd;
pub mod messages;
pub mod mount_cmd;
pub mod output;
pub mod plan_cmd;
pub mod progress;
pub mod run;
#[cfg(feature = "server")]
pub mod serve_cmd;
pub mod size;
pub mod values;
