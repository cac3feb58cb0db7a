//! The integration tests, one binary (one link instead of one per file): each module is one
//! concern of the CLI or the library, run against the real binary and real servers.

mod bench_cli;
mod changing;
mod checkpoint;
mod cli_help;
mod cli_messages;
mod common;
mod compress;
mod core_kms;
mod core_roundtrip;
mod core_safety;
mod core_tamper;
mod decrypt_resume;
mod durability;
mod enospc;
mod everyday;
mod fidelity;
mod hostile;
mod incremental;
// `kms_aliyun`, `kms_serve_limits` and `wrappings` drive `envseal kms serve` in every test.
mod deploy;
#[cfg(feature = "server")]
mod kms_aliyun;
mod kms_aws;
mod kms_e2e;
mod kms_local;
#[cfg(feature = "server")]
mod kms_serve_limits;
mod legacy;
mod lock;
mod merge;
mod mount;
mod packs;
mod pipeline;
mod progress_totals;
mod races_dest;
mod races_src;
mod review;
mod rewrap;
mod shard;
mod sparse;
mod store;
mod store_resume;
mod store_trees;
mod survive;
mod terminal;
mod to_device;
mod verify_sample;
mod verify_source;
#[cfg(feature = "server")]
mod wrappings;
