//! `--key [<KMS URL>#]<CMK>`: a master key and, optionally, the provider that holds it.
//!
//! `encrypt` takes several (`--key A --key aliyun:http://host:port#alias/B`): the batch key is
//! generated under the first and wrapped under each of the others, so that any one of them
//! opens the vault alone. `rewrap --key` takes one. A key without a `#` is held by the
//! command's `--kms` (or `ENVSEAL_KMS`, else `local`).

use crate::error::{Error, Result};
use crate::kms::{ProviderUrl, WrappedKey};

/// A CMK (id, ARN or alias) and the provider URL that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub kms: String,
    pub key: String,
}

impl KeySpec {
    /// Parses `[<KMS URL>#]<CMK>`; `default_kms` is used when no URL is given. CMK ids, ARNs
    /// and aliases never hold a `#`, so the last one separates them from the URL.
    pub fn parse(spec: &str, default_kms: &str) -> Result<KeySpec> {
        let (kms, key) = match spec.rsplit_once('#') {
            Some((kms, key)) => (kms, key),
            None => (default_kms, spec),
        };
        if key.is_empty() {
            return Err(Error::Usage(format!(
                "--key {spec:?}: no CMK after the provider (expected [<KMS URL>#]<CMK id, ARN or alias>)"
            )));
        }
        ProviderUrl::parse(kms).map_err(|e| Error::Usage(format!("--key {spec:?}: {e}")))?;
        Ok(KeySpec {
            kms: kms.to_string(),
            key: key.to_string(),
        })
    }

    /// Whether a recorded wrapping is by this CMK: its id (or ARN) equals the given key, and
    /// when the spec named its KMS, the wrapping's KMS too. Aliases are not resolved here.
    pub fn names(&self, w: &WrappedKey, explicit_kms: bool) -> bool {
        w.key_id == self.key && (!explicit_kms || w.kms == self.kms)
    }
}

/// `KMS#CMK`, the way envseal shows which CMKs can open a vault.
pub fn describe(w: &WrappedKey) -> String {
    format!("{}#{}", w.kms, w.key_id)
}

/// A CMK that wraps batch keys of a vault, and how many of its batches.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Wrapper {
    pub kms: String,
    pub key_id: String,
    /// Batches this CMK wraps; it opens the vault alone when this is all of them.
    pub batches: usize,
    pub opens_alone: bool,
}

/// The CMKs that wrap a vault's batch keys, in the order first seen (`ls --keys`,
/// `verify --json`).
pub fn wrappers(batches: &[crate::format::manifest::Batch]) -> Vec<Wrapper> {
    let mut out: Vec<Wrapper> = Vec::new();
    for b in batches {
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for w in &b.wrapped {
            if seen.contains(&(w.kms.as_str(), w.key_id.as_str())) {
                continue;
            }
            seen.push((&w.kms, &w.key_id));
            match out
                .iter_mut()
                .find(|o| o.kms == w.kms && o.key_id == w.key_id)
            {
                Some(o) => o.batches += 1,
                None => out.push(Wrapper {
                    kms: w.kms.clone(),
                    key_id: w.key_id.clone(),
                    batches: 1,
                    opens_alone: false,
                }),
            }
        }
    }
    for o in &mut out {
        o.opens_alone = o.batches == batches.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_carry_their_provider_or_take_the_default() {
        let s = KeySpec::parse("alias/a", "local").unwrap();
        assert_eq!((s.kms.as_str(), s.key.as_str()), ("local", "alias/a"));
        let s = KeySpec::parse("aliyun:http://127.0.0.1:9#alias/Apollo/WorkKey", "local").unwrap();
        assert_eq!(s.kms, "aliyun:http://127.0.0.1:9");
        assert_eq!(s.key, "alias/Apollo/WorkKey");
        let s = KeySpec::parse("local:/tmp/x#k", "aws:http://h").unwrap();
        assert_eq!((s.kms.as_str(), s.key.as_str()), ("local:/tmp/x", "k"));
        for bad in ["local#", "gcp:https://x#k", "nope#k", "#k"] {
            assert!(
                matches!(KeySpec::parse(bad, "local"), Err(Error::Usage(_))),
                "{bad}"
            );
        }
    }
}
