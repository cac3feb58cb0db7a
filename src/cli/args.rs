//! Command-line definitions (clap). Parsed once here; handlers get validated options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use envseal::store::Location;

use super::values::{Jobs, SegmentSize};

/// Shown after the top-level help and in the man page.
const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 runtime error (I/O, KMS, some files failed); 2 wrong arguments; \
3 integrity failure found by verify or decrypt; 130 interrupted (run the same command again \
to resume).

Environment: ENVSEAL_KMS (default --kms), ENVSEAL_HOME (local key store in \
$ENVSEAL_HOME/keystore), ENVSEAL_PASSPHRASE (seals a new local key store, unlocks a sealed \
one), ENVSEAL_KMS_TRUST, ENVSEAL_KMS_TIMEOUT, ENVSEAL_KMS_ATTEMPTS, \
ALIBABA_CLOUD_ACCESS_KEY_ID/_SECRET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
AWS_SESSION_TOKEN, AWS_REGION, NO_COLOR.";

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
    max_term_width = 100,
    after_help = AFTER_HELP
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
    ///
    /// Keeps modes, times, owners, hard links, extended attributes, FIFOs and device nodes;
    /// holes of sparse files and zero runs of disk images are neither read nor stored.
    Encrypt(EncryptArgs),
    /// Cut sources into N parts to encrypt on N hosts at once (docs/SCALE-OUT.md).
    ///
    /// A walk of the sources' metadata (no file is read) cuts them, in the vault's tree order,
    /// into N contiguous parts balanced by bytes and by entries (a file larger than a share is
    /// a part of its own), and fixes what every part shares: the vault id, keys, KMS,
    /// excludes, segment size and --conceal-names. Each part is then `envseal encrypt --plan
    /// PLAN --shard I -o PART`, on any host that sees the sources at the same absolute paths,
    /// and `envseal merge` joins the parts into one vault (docs/SCALE-OUT.md).
    Plan(PlanArgs),
    /// Decrypt a vault (or part of it) into a destination directory.
    Decrypt(DecryptArgs),
    /// Check a vault: without --deep no key is needed; --deep authenticates every byte.
    Verify(VerifyArgs),
    /// List a vault's entries.
    Ls(LsArgs),
    /// Show a vault as a read-only file system (FUSE) until it is unmounted.
    ///
    /// The manifest is authenticated whole before the mount appears; each read decrypts only
    /// the segments it touches, every one authenticated first. Runs in the foreground: stop it
    /// with `fusermount3 -u DIR`, `umount DIR`, Ctrl-C or SIGTERM (it unmounts itself; exit 0).
    /// Needs /dev/fuse and fusermount3 (Debian: fuse3).
    Mount(MountArgs),
    /// Put a vault's data keys under another master key (no data read or rewritten).
    Rewrap(RewrapArgs),
    /// Join the parts of a sharded run into one vault (nothing is encrypted again).
    ///
    /// The parts (encrypt --plan PLAN --shard I) are every shard 0..N-1 of one plan, each
    /// once, in any order. Each part's batch keys are unwrapped (one KMS Decrypt per batch)
    /// and its manifest authenticated; objects are hard-linked, copied on the object store, or
    /// copied where neither can be done; the new manifest is written last. Parts of another
    /// plan, a missing or repeated shard, overlapping parts or a VAULT that is not new are
    /// refused (exit 2) before anything is written. An interrupted merge finishes when the
    /// same command runs again (objects already in place are kept).
    Merge(super::merge_cmd::MergeArgs),
    /// Import the files written by the Alibaba Cloud KMS guide's Python envelope sample.
    ImportLegacy(ImportLegacyArgs),
    /// Manage master keys (CMKs) and run an Alibaba-compatible KMS server.
    #[command(subcommand)]
    #[cfg_attr(not(feature = "server"), command(about = "Manage master keys (CMKs)"))]
    Kms(KmsCommand),
    /// Measure this machine's throughput for the primitives envseal uses.
    Bench(BenchArgs),
    /// Print a shell completion script (e.g. envseal completions bash > /etc/bash_completion.d/envseal).
    Completions(CompletionsArgs),
    /// Print the man page (troff) on stdout, or write one page per command into a directory.
    Man(ManArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "\
Who sees it: only the user who mounted it, as FUSE allows by default (no allow_other); \
other users, root included, get 'Permission denied' on DIR. Mounted by root it shows the \
recorded owners and modes, and the kernel checks them (default_permissions), so root reads \
everything and a user's process running as root gets what root gets. Setuid bits and device \
nodes are shown but not honoured (nosuid, nodev). Writes fail with 'Read-only file system'.

A record that fails authentication (tampered or damaged) makes reads of that file fail \
with EIO and prints a line on stderr; the other files stay readable. Memory stays bounded: \
opened segments are kept in a cache of --cache-mib (default 64).

E.g. `envseal mount backup.vault /mnt/backup` (local) or `envseal mount s3://bucket/backup \
/mnt/backup`; then `fusermount3 -u /mnt/backup`.")]
pub struct MountArgs {
    /// The vault: a directory, s3://BUCKET/PREFIX or oss://BUCKET/PREFIX.
    #[arg(value_name = "VAULT", value_parser = VaultArg)]
    pub vault: Location,
    /// An existing directory to mount it on (what it holds is hidden while mounted).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Use this KMS instead of the one the manifest names (as decrypt).
    #[arg(long, value_name = "URL")]
    pub kms: Option<String>,
    /// Unwrap only keys wrapped by this CMK (id or ARN; repeatable), as decrypt.
    #[arg(long, value_name = "CMK")]
    pub expect_key: Vec<String>,
    /// MiB of opened segments kept in memory (at least one segment).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub cache_mib: usize,
    /// Threads opening segments (default: number of cores); at most 8 serve requests.
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<Jobs>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write envseal.1 and envseal-<command>.1 for every command into DIR instead.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<std::path::PathBuf>,
}

/// Options shared by the commands that talk to a KMS.
#[derive(Debug, Args, Clone)]
pub struct KmsArgs {
    /// KMS provider URL: local, local:<DIR>, aliyun:<http(s)://host[:port]>[?region=R],
    /// aws:<http(s)://host[:port]>[?region=R] (the HTTP providers need the regional endpoint,
    /// e.g. aws:https://kms.us-east-1.amazonaws.com). Default: local (or ENVSEAL_KMS).
    #[arg(long, env = "ENVSEAL_KMS", value_name = "URL")]
    pub kms: Option<String>,
}

/// The KMS of the key-management commands: envseal manages keys in its local store and in
/// Alibaba Cloud KMS; AWS KMS keys are managed with the AWS CLI.
#[derive(Debug, Args, Clone)]
pub struct AdminKmsArgs {
    /// KMS provider URL: local, local:<DIR> or aliyun:<http(s)://host[:port]>[?region=R].
    /// Default: local (or ENVSEAL_KMS). For AWS KMS use the AWS CLI (aws kms ...).
    #[arg(long, env = "ENVSEAL_KMS", value_name = "URL")]
    pub kms: Option<String>,
}

/// Options shared by the commands that report a run.
#[derive(Debug, Args, Clone)]
pub struct OutputArgs {
    /// No progress and no summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print a machine-readable summary as JSON on stdout (schema: docs/JSON.md).
    #[arg(long)]
    pub json: bool,
    /// Seconds between plain progress lines when stderr is not a terminal (one line is
    /// printed as the work starts).
    #[arg(long, value_name = "SECS", default_value = "5")]
    pub progress_interval: String,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  envseal encrypt ~/data /srv/db.img -o backup.vault --key alias/backup
  envseal plan /share --shards 16 -o share.plan.json --key alias/backup
  envseal encrypt --plan share.plan.json --shard 3 -o s3://backups/share/part-3")]
pub struct EncryptArgs {
    /// Files, directories, disk images or block devices; each becomes a top-level entry.
    #[arg(required_unless_present = "plan", value_name = "SRC")]
    pub sources: Vec<PathBuf>,
    /// Encrypt one part of a plan made by `envseal plan` (with --shard): the plan fixes the
    /// sources, keys and options; PART is a vault of its own that `envseal merge` joins with
    /// the others (docs/SCALE-OUT.md). Rerun the same command to resume it.
    #[arg(long, value_name = "PLAN.json", requires = "shard")]
    pub plan: Option<PathBuf>,
    /// The part of --plan to encrypt: 0 to N-1 (e.g. $SLURM_ARRAY_TASK_ID or
    /// $JOB_COMPLETION_INDEX).
    #[arg(long, value_name = "I", requires = "plan")]
    pub shard: Option<u32>,
    /// Whether --kms was given on the command line (not taken from ENVSEAL_KMS): a plan
    /// fixes the KMS, so only a flag is refused with --plan.
    #[arg(skip)]
    pub kms_flag: bool,
    /// The vault to create: a directory, or s3://BUCKET/PREFIX (oss://BUCKET/PREFIX on Alibaba
    /// Cloud OSS; docs/STORAGE.md).
    #[arg(short, long, value_name = "VAULT", value_parser = VaultArg)]
    pub output: Location,
    /// CMK id, ARN or alias (default: alias/envseal/default, created on first use with local).
    /// Repeatable, each as [<KMS URL>#]<CMK>: the data keys are generated under the first and
    /// also wrapped under each other one, and any one of them opens the vault alone, e.g.
    /// --key alias/work --key aliyun:https://kms.cn-hangzhou.aliyuncs.com#alias/escrow
    #[arg(long, value_name = "CMK")]
    pub key: Vec<String>,
    #[command(flatten)]
    pub kms: KmsArgs,
    /// Worker threads (default: number of cores).
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<Jobs>,
    /// Segment size: a power of two from 4KiB to 64MiB (e.g. 64KiB, 1MiB; KiB and MiB are
    /// powers of 1024, KB and MB powers of 1000; default 1MiB, or that of the --since vault).
    #[arg(long, value_name = "SIZE")]
    pub segment_size: Option<SegmentSize>,
    /// Incremental: files whose type, size, mtime, inode and ctime match this earlier vault's
    /// entries are taken from it without being read or encrypted again; the new vault holds
    /// the whole current tree and does not need the earlier one afterwards, e.g.
    /// `envseal encrypt data -o mon.vault --since sun.vault`.
    #[arg(long, value_name = "EARLIER_VAULT", value_parser = VaultArg)]
    pub since: Option<Location>,
    /// Skip paths matching this glob (repeatable). A glob is matched against the path below
    /// each source and against the file name: '*.tmp' skips every .tmp file, 'build/*' what
    /// is directly in build. '*' and '?' stop at '/', '**' crosses directories.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Keep paths only inside the encrypted part of the manifest.
    #[arg(long)]
    pub conceal_names: bool,
    /// Do not wait for the vault to reach the disk (as `pg_dump --no-sync`): faster, and still
    /// resumable after envseal is killed, but a crash of the operating system can leave the
    /// vault incomplete (`verify` finds it). Default: sync before journaling and before success.
    #[arg(long)]
    pub no_sync: bool,
    /// Do not store extended attributes (xattrs, ACLs, file capabilities); by default every
    /// attribute this user can read is stored, sealed.
    #[arg(long)]
    pub no_xattrs: bool,
    /// Resume an unfinished run in VAULT (running the same command again does this too).
    #[arg(long)]
    pub resume: bool,
    /// Encrypt a source even if it is itself a vault (refused by default: usually the vault
    /// and the source were swapped).
    #[arg(long)]
    pub force: bool,
    /// Compress each segment with Zstandard before sealing it, where that saves space
    /// (stored as is where it does not): `zstd` (level 3) or `zstd:LEVEL`, LEVEL 1-19.
    /// Files below 8MiB are then packed; larger ones are compressed records of their own.
    /// Nothing is needed to decrypt or verify. Compressed sizes tell something about the
    /// contents (README, threat model).
    #[arg(long, value_name = "zstd[:LEVEL]")]
    pub compress: Option<String>,
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

/// The arguments of `envseal plan` (docs/SCALE-OUT.md).
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  envseal plan /share/lab --shards 16 -o lab.plan.json --key alias/backup
  envseal encrypt --plan lab.plan.json --shard $SLURM_ARRAY_TASK_ID -o /scratch/parts/$SLURM_ARRAY_TASK_ID")]
pub struct PlanArgs {
    /// Files, directories, disk images or block devices; each becomes a top-level entry.
    #[arg(required = true, value_name = "SRC")]
    pub sources: Vec<PathBuf>,
    /// How many parts (1 to 4096): one per host or task that will encrypt one.
    #[arg(long, value_name = "N")]
    pub shards: usize,
    /// The plan file to write (JSON); an existing one is kept unless --force.
    #[arg(short, long, value_name = "PLAN.json")]
    pub output: PathBuf,
    /// CMK id, ARN or alias, as for encrypt (repeatable, each as [<KMS URL>#]<CMK>; the data
    /// keys are generated under the first). Default: alias/envseal/default.
    #[arg(long, value_name = "CMK")]
    pub key: Vec<String>,
    #[command(flatten)]
    pub kms: KmsArgs,
    /// Skip paths matching this glob (repeatable), as encrypt --exclude.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Segment size of every part: a power of two from 4KiB to 64MiB (default 1MiB).
    #[arg(long, value_name = "SIZE")]
    pub segment_size: Option<SegmentSize>,
    /// Keep paths only inside the encrypted part of each part's manifest (the plan file
    /// itself holds the sources and the N-1 paths where the parts meet in clear).
    #[arg(long)]
    pub conceal_names: bool,
    /// Every part compresses with Zstandard before sealing, as encrypt --compress:
    /// `zstd` (level 3) or `zstd:LEVEL`, LEVEL 1-19.
    #[arg(long, value_name = "zstd[:LEVEL]")]
    pub compress: Option<String>,
    /// Replace an existing plan file (parts made with the old one no longer match it).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// The vault: a directory, s3://BUCKET/PREFIX or oss://BUCKET/PREFIX.
    #[arg(value_name = "VAULT", value_parser = VaultArg)]
    pub vault: Location,
    /// Destination directory (created if absent).
    #[arg(
        short,
        long,
        value_name = "DEST",
        required_unless_present = "to_device"
    )]
    pub output: Option<PathBuf>,
    /// Write the one file entry named by --only (a disk image) onto this block device or
    /// existing file, in place, each segment authenticated before it is written; a mounted
    /// device is refused. A failure midway leaves part of the image written (exit 3). E.g.
    /// `envseal decrypt disk.vault --only sdb.img --to-device /dev/sdb`.
    #[arg(long, value_name = "DEVICE", conflicts_with_all = ["output", "overwrite"])]
    pub to_device: Option<PathBuf>,
    /// Restore only these paths or globs, as `envseal ls` shows them (a directory brings its
    /// contents; repeatable). '*' and '?' stop at '/' ('tree/*.txt' is not 'tree/sub/b.txt'),
    /// '**' crosses directories ('tree/**/*.txt').
    #[arg(long, value_name = "PATH|GLOB")]
    pub only: Vec<String>,
    /// Replace files that already exist in DEST.
    #[arg(long)]
    pub overwrite: bool,
    /// Give entries their recorded owners by numeric id, not by user and group name (root
    /// only; as GNU tar).
    #[arg(long, conflicts_with = "no_owner")]
    pub numeric_owner: bool,
    /// Never change ownership, even as root (restored entries belong to the running user).
    #[arg(long)]
    pub no_owner: bool,
    /// Do not wait for restored files to reach the disk (one `syncfs` of DEST by default):
    /// faster, but a crash of the operating system can lose or truncate restored files.
    #[arg(long)]
    pub no_sync: bool,
    /// Do not restore extended attributes (xattrs, ACLs, file capabilities).
    #[arg(long)]
    pub no_xattrs: bool,
    /// Use this KMS instead of the one the manifest names (for moved endpoints; ENVSEAL_KMS
    /// is not read here: the manifest knows where each key lives).
    #[arg(long, value_name = "URL")]
    pub kms: Option<String>,
    /// Unwrap only keys wrapped by this CMK (id or ARN; repeatable): a vault names its own
    /// KMS and CMK, so restore pipelines say which they trust.
    #[arg(long, value_name = "CMK")]
    pub expect_key: Vec<String>,
    /// Not an option of decrypt (the vault names its keys): accepted only to point to
    /// --expect-key instead of clap's generic advice.
    #[arg(long, value_name = "CMK", hide = true)]
    pub key: Vec<String>,
    /// Worker threads (default: number of cores).
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<Jobs>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The vault: a directory, s3://BUCKET/PREFIX or oss://BUCKET/PREFIX.
    #[arg(value_name = "VAULT", value_parser = VaultArg)]
    pub vault: Location,
    /// Unwrap the keys, authenticate the manifest and every segment, check plaintext digests.
    #[arg(long)]
    pub deep: bool,
    /// Use this KMS instead of the one the manifest names (with --deep or --source).
    #[arg(long, value_name = "URL")]
    pub kms: Option<String>,
    /// Compare the vault with the live tree it was made from (the path given to encrypt;
    /// repeatable), without decrypting: keyed plaintext digests and metadata. Reports
    /// changed, bitrot (content changed, size and mtime not), metadata, missing and extra
    /// paths; exit 0 only when they match. E.g. `envseal verify --source ~/data data.vault`.
    #[arg(long, value_name = "DIR")]
    pub source: Vec<std::path::PathBuf>,
    /// With --source: paths the encrypt run excluded (its --exclude globs).
    #[arg(long, value_name = "GLOB", requires = "source")]
    pub exclude: Vec<String>,
    /// With --deep: unwrap only keys wrapped by this CMK (id or ARN; repeatable).
    #[arg(long, value_name = "CMK")]
    pub expect_key: Vec<String>,
    /// Read only some objects' records: `n/m`, slice n of m (the objects whose id falls in
    /// it; `1/7` ... `7/7` on seven nights read every object once), or `P%`, a random share of
    /// the objects' bytes. The manifest is still read and authenticated whole, and every
    /// object's presence and length checked.
    #[arg(long, value_name = "n/m|P%", value_parser = parse_sample, conflicts_with = "source")]
    pub sample: Option<envseal::pipeline::verify::Sample>,
    /// Worker threads (default: number of cores).
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<Jobs>,
    #[command(flatten)]
    pub out: OutputArgs,
}

fn parse_sample(s: &str) -> Result<envseal::pipeline::verify::Sample, String> {
    envseal::pipeline::verify::Sample::parse(s)
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// The vault: a directory, s3://BUCKET/PREFIX or oss://BUCKET/PREFIX.
    #[arg(value_name = "VAULT", value_parser = VaultArg)]
    pub vault: Location,
    /// One JSON object per entry on stdout.
    #[arg(long)]
    pub json: bool,
    /// Use this KMS instead of the one the manifest names (concealed names need the key;
    /// with --keys, the aliases of a remote KMS are looked up only there).
    #[arg(long, value_name = "URL")]
    pub kms: Option<String>,
    /// List the master keys (CMKs) that wrap the vault's data keys instead of its entries,
    /// with the aliases that point at them where the key store can tell (local stores; a
    /// remote KMS given with --kms), and whether each opens the vault alone (no key needed),
    /// e.g. `envseal ls --keys VAULT`.
    #[arg(long)]
    pub keys: bool,
}

#[derive(Debug, Subcommand)]
pub enum KmsCommand {
    /// Create a customer master key; prints its KeyMetadata as JSON (local or aliyun).
    CreateKey {
        /// A description stored with the key (shown by describe and list).
        #[arg(long, default_value = "", value_name = "TEXT")]
        description: String,
        #[command(flatten)]
        kms: AdminKmsArgs,
    },
    /// Point an alias (alias/...) at a key; encrypt --key takes the alias.
    CreateAlias {
        /// The alias to create, e.g. alias/backup/2026 (must start with alias/).
        #[arg(value_name = "ALIAS")]
        alias: String,
        /// The key id the alias points to (as printed by create-key or list).
        #[arg(value_name = "KEY_ID")]
        key_id: String,
        #[command(flatten)]
        kms: AdminKmsArgs,
    },
    /// List keys and aliases as JSON.
    List {
        #[command(flatten)]
        kms: AdminKmsArgs,
    },
    /// Show one key's KeyMetadata as JSON.
    Describe {
        /// Key id, ARN or alias.
        #[arg(value_name = "KEY")]
        key: String,
        #[command(flatten)]
        kms: AdminKmsArgs,
    },
    /// Disable a key: it can no longer generate or unwrap data keys.
    DisableKey {
        /// The key id.
        #[arg(value_name = "KEY_ID")]
        key_id: String,
        #[command(flatten)]
        kms: AdminKmsArgs,
    },
    /// Enable a disabled key.
    EnableKey {
        /// The key id.
        #[arg(value_name = "KEY_ID")]
        key_id: String,
        #[command(flatten)]
        kms: AdminKmsArgs,
    },
    /// Schedule a key for deletion after a waiting period.
    ScheduleKeyDeletion {
        /// The key id.
        #[arg(value_name = "KEY_ID")]
        key_id: String,
        /// Days before the key is deleted (7 to 366); every vault sealed with it becomes
        /// unreadable then.
        #[arg(long, default_value_t = 30, value_name = "N")]
        pending_days: u32,
        #[command(flatten)]
        kms: AdminKmsArgs,
    },
    /// Serve the Alibaba Cloud KMS API (2016-01-20) over HTTP(S) from a key store directory.
    #[cfg(feature = "server")]
    Serve(ServeArgs),
}

#[cfg(feature = "server")]
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
    /// Threads for the all-core figures (default: number of cores).
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<Jobs>,
    /// Print the figures as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Parses a `VAULT` argument (a directory, or a storage service URL) into a [`Location`],
/// keeping paths that are not UTF-8.
#[derive(Clone, Copy, Debug)]
pub struct VaultArg;

impl clap::builder::TypedValueParser for VaultArg {
    type Value = Location;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Location, clap::Error> {
        Location::parse(value).map_err(|e| {
            let name = arg.map(|a| a.to_string()).unwrap_or_else(|| "VAULT".into());
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for {name}: {e}\n"),
            )
            .with_cmd(cmd)
        })
    }
}

/// Put a vault's data keys under another master key, without reading or rewriting any data.
///
/// Each batch key is moved under the new CMK (ReEncrypt within one KMS, else Decrypt +
/// Encrypt), checked against the batch's key commitment, and the wrappings are replaced in
/// the manifest and key files. A few KMS calls per batch, whatever the data size.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  envseal rewrap backup.vault --key alias/new-key
  envseal rewrap backup.vault --add --key aliyun:https://kms.cn-hangzhou.aliyuncs.com#alias/escrow
  envseal rewrap backup.vault --remove <CMK id as `envseal ls --keys` shows it>")]
pub struct RewrapArgs {
    /// The vault: a directory, s3://BUCKET/PREFIX or oss://BUCKET/PREFIX.
    #[arg(value_name = "VAULT", value_parser = VaultArg)]
    pub vault: envseal::store::Location,
    /// The new CMK: [<KMS URL>#]<CMK id, ARN or alias>; without a URL, the one of --kms.
    #[arg(long, value_name = "CMK")]
    pub key: Option<String>,
    /// KMS of the new CMK (default: local, or ENVSEAL_KMS). The vault's current KMS is the
    /// one its wrappings name.
    #[arg(long, env = "ENVSEAL_KMS", value_name = "URL")]
    pub kms: Option<String>,
    /// Keep the current wrappings and add the new one (any one of them then opens the vault).
    #[arg(long, requires = "key")]
    pub add: bool,
    /// Drop the wrappings by this CMK (its id, or <KMS URL>#<id>); never the last one.
    /// Repeatable; with --key, the other wrappings are kept.
    #[arg(long, value_name = "CMK")]
    pub remove: Vec<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Import the files written by the Alibaba Cloud KMS guide's Python envelope sample.
///
/// Each FILE holds four lines: the data key's CiphertextBlob (from GenerateDataKey), then
/// base64 of the 16-byte AES-EAX nonce, of the ciphertext and of the 16-byte tag. Each key
/// is unwrapped by the KMS given with --kms, the EAX tag is checked before anything is
/// released, and the plaintext goes into a new vault (-o) or a directory (--to), named
/// without the `.cipher` suffix. Bad files are named and skipped (exit 1).
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  envseal import-legacy data/*.cipher -o data.vault \\
      --kms aliyun:https://kms.cn-hangzhou.aliyuncs.com --key local#alias/envseal/default
  envseal import-legacy report.txt.cipher --to restored/ --kms aliyun:http://127.0.0.1:8443")]
pub struct ImportLegacyArgs {
    /// The guide's output files.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The vault to create: a directory, s3://BUCKET/PREFIX or oss://BUCKET/PREFIX.
    #[arg(
        short,
        long,
        value_name = "VAULT",
        value_parser = VaultArg,
        required_unless_present = "to",
        conflicts_with = "to"
    )]
    pub output: Option<envseal::store::Location>,
    /// Write the plaintext files into this directory instead (existing files are kept).
    #[arg(long, value_name = "DEST")]
    pub to: Option<PathBuf>,
    /// The KMS holding the guide's CMK (default: local, or ENVSEAL_KMS).
    #[arg(long, env = "ENVSEAL_KMS", value_name = "URL")]
    pub kms: Option<String>,
    /// CMK(s) for the new vault, as for encrypt: [<KMS URL>#]<CMK>, repeatable (default:
    /// the CMK that wrapped the files' data keys, on the --kms provider).
    #[arg(long, value_name = "CMK")]
    pub key: Vec<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}
