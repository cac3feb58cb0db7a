//! Command-line definitions (clap). Parsed once here; handlers get validated options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// envseal: encrypt whole directory trees and disk images with keys held by a KMS.
///
/// One data key per batch comes from the KMS (GenerateDataKey); every file gets its own derived
/// key and is sealed in AES-256-GCM segments in parallel. The vault's manifest keeps the wrapped
/// keys and BLAKE3 digests, so it can be verified without the key and restored whole or in part.
#[derive(Debug, Parser)]
#[command(
    name = "envseal",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// More log lines on stderr (-v: KMS retries and notices, -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Encrypt files, directories and disk images into a vault directory.
    Encrypt(EncryptArgs),
    /// Decrypt a vault (or part of it) into a destination directory.
    Decrypt(DecryptArgs),
    /// Check a vault: without --deep no key is needed; --deep authenticates every byte.
    Verify(VerifyArgs),
    /// List a vault's entries.
    Ls(LsArgs),
    /// Manage master keys (CMKs) and run an Alibaba-compatible KMS server.
    #[command(subcommand)]
    Kms(KmsCommand),
    /// Measure this machine's throughput for the primitives envseal uses.
    Bench(BenchArgs),
}

/// Options shared by the commands that talk to a KMS.
#[derive(Debug, Args, Clone)]
pub struct KmsArgs {
    /// KMS provider URL: local, local:<DIR>, aliyun:<http(s)://host[:port]>[?region=R],
    /// aws:<http(s)://host[:port]>[?region=R]. Default: local (or ENVSEAL_KMS).
    #[arg(long, env = "ENVSEAL_KMS", value_name = "URL")]
    pub kms: Option<String>,
}

/// Options shared by the commands that report a run.
#[derive(Debug, Args, Clone)]
pub struct OutputArgs {
    /// No progress and no summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print a machine-readable summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// Files, directories, disk images or block devices; each becomes a top-level entry.
    #[arg(required = true, value_name = "SRC")]
    pub sources: Vec<PathBuf>,
    /// The vault directory to create.
    #[arg(short, long, value_name = "VAULT")]
    pub output: PathBuf,
    /// CMK id, ARN or alias (default: alias/envseal/default, created on first use with local).
    #[arg(long, value_name = "CMK")]
    pub key: Option<String>,
    #[command(flatten)]
    pub kms: KmsArgs,
    /// Worker threads (default: number of cores).
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Segment size: a power of two from 4KiB to 64MiB (e.g. 64KiB, 1MiB).
    #[arg(long, value_name = "SIZE", default_value = "1MiB")]
    pub segment_size: String,
    /// Skip paths matching this glob (relative to each source; repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Keep paths only inside the encrypted part of the manifest.
    #[arg(long)]
    pub conceal_names: bool,
    /// Resume an unfinished run in VAULT (running the same command again does this too).
    #[arg(long)]
    pub resume: bool,
    /// Files smaller than this are sealed into shared packs (default 1MiB; 0 = never pack).
    #[arg(long, value_name = "SIZE", hide = true)]
    pub pack_threshold: Option<String>,
    /// Start a new batch (a new data key) after this many files.
    #[arg(long, value_name = "N", hide = true)]
    pub batch_max_files: Option<u64>,
    /// Start a new batch (a new data key) after this many bytes.
    #[arg(long, value_name = "SIZE", hide = true)]
    pub batch_max_bytes: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// The vault directory.
    #[arg(value_name = "VAULT")]
    pub vault: PathBuf,
    /// Destination directory (created if absent).
    #[arg(short, long, value_name = "DEST")]
    pub output: PathBuf,
    /// Restore only these paths or globs (a directory brings its contents; repeatable).
    #[arg(long, value_name = "PATH|GLOB")]
    pub only: Vec<String>,
    /// Replace files that already exist in DEST.
    #[arg(long)]
    pub overwrite: bool,
    /// Use this KMS instead of the one the manifest names (for moved endpoints; ENVSEAL_KMS
    /// is not read here: the manifest knows where each key lives).
    #[arg(long, value_name = "URL")]
    pub kms: Option<String>,
    /// Unwrap only keys wrapped by this CMK (id or ARN; repeatable): a vault names its own
    /// KMS and CMK, so restore pipelines say which they trust.
    #[arg(long, value_name = "CMK")]
    pub expect_key: Vec<String>,
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[arg(value_name = "VAULT")]
    pub vault: PathBuf,
    /// Unwrap the keys, authenticate the manifest and every segment, check plaintext digests.
    #[arg(long)]
    pub deep: bool,
    /// Use this KMS instead of the one the manifest names (with --deep).
    #[arg(long, value_name = "URL")]
    pub kms: Option<String>,
    /// With --deep: unwrap only keys wrapped by this CMK (id or ARN; repeatable).
    #[arg(long, value_name = "CMK")]
    pub expect_key: Vec<String>,
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[arg(value_name = "VAULT")]
    pub vault: PathBuf,
    /// One JSON object per entry on stdout.
    #[arg(long)]
    pub json: bool,
    /// Use this KMS instead of the one the manifest names (concealed names need the key).
    #[arg(long, value_name = "URL")]
    pub kms: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KmsCommand {
    /// Create a customer master key; prints its KeyMetadata as JSON.
    CreateKey {
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Point an alias (alias/...) at a key.
    CreateAlias {
        alias: String,
        key_id: String,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// List keys and aliases as JSON.
    List {
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Show one key's KeyMetadata as JSON.
    Describe {
        key: String,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Disable a key: it can no longer generate or unwrap data keys.
    DisableKey {
        key_id: String,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Enable a disabled key.
    EnableKey {
        key_id: String,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Schedule a key for deletion after a waiting period.
    ScheduleKeyDeletion {
        key_id: String,
        #[arg(long, default_value_t = 30, value_name = "N")]
        pending_days: u32,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Serve the Alibaba Cloud KMS API (2016-01-20) over HTTP(S) from a key store directory.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8443 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Key store directory (created if absent).
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Bytes processed per measurement.
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    pub size: String,
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<usize>,
    #[arg(long)]
    pub json: bool,
}
