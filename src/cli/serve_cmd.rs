//! PLACEHOLDER: `envseal kms serve` (replaced by the aliyun work).
use super::args::ServeArgs;

pub fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("not built yet")
}
