//! PLACEHOLDER: `envseal kms create-key|create-alias|list|...` (replaced by the key-store work).
use super::args::KmsCommand;

pub fn run(cmd: KmsCommand) -> anyhow::Result<i32> {
    let _ = cmd;
    anyhow::bail!("not built yet")
}
