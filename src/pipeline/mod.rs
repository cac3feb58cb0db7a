//! The pipelines: `encrypt` (walk -> plan -> seal -> one writer -> store) and its
//! journal, `decrypt` and `--to-device`, `verify` and `verify --source`, `rewrap`,
//! `--since`, `import-legacy`; each holds a store handle, never a vault path
//! (docs/ARCHITECTURE.md).

pub mod decrypt;
pub mod device;
pub mod encrypt;
pub mod journal;
pub mod leftovers;
pub mod legacy;
pub mod merge;
pub mod object;
pub mod rewrap;
pub mod seal;
pub mod since;
pub mod vault;
pub mod verify;
pub mod verify_source;

pub mod write;
