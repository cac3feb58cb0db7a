//! `s3://BUCKET/PREFIX` and `oss://BUCKET/PREFIX`: the URL, and the endpoint, region and
//! credentials read from the environment by the AWS SDK conventions (docs/STORAGE.md,
//! "Environment"). Secrets are never shown by `Debug` nor put in a message.

use std::fmt;

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::sigv4::{self, Credentials};

/// Which service's conventions a URL follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// AWS S3 or any S3-compatible server (`s3://`).
    S3,
    /// Alibaba Cloud OSS through its S3-compatible API (`oss://`).
    Oss,
}

impl Flavor {
    pub fn scheme(self) -> &'static str {
        match self {
            Flavor::S3 => "s3",
            Flavor::Oss => "oss",
        }
    }
}

/// A vault on object storage: a bucket and a key prefix (`""`, or ending in `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub flavor: Flavor,
    pub bucket: String,
    /// Empty, or `/`-separated segments ending in `/`.
    pub prefix: String,
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}/{}",
            self.flavor.scheme(),
            self.bucket,
            self.prefix.trim_end_matches('/')
        )
    }
}

impl S3Url {
    /// Parses `s3://BUCKET[/PREFIX]` or `oss://BUCKET[/PREFIX]`; `None` when `arg` has
    /// neither scheme (a local path). Bad bucket names and `..` are usage errors naming
    /// the argument.
    pub fn parse(arg: &str) -> Option<Result<S3Url>> {
        let (flavor, rest) = if let Some(r) = arg.strip_prefix("s3://") {
            (Flavor::S3, r)
        } else if let Some(r) = arg.strip_prefix("oss://") {
            (Flavor::Oss, r)
        } else {
            return None;
        };
        let bad = |why: &str| {
            Err(Error::Usage(format!(
                "invalid vault URL {arg:?}: {why} (expected {}://BUCKET/PREFIX)",
                flavor.scheme()
            )))
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if let Err(why) = check_bucket(bucket) {
            return Some(bad(&why));
        }
        let prefix = prefix.trim_end_matches('/');
        let mut norm = String::new();
        if !prefix.is_empty() {
            for seg in prefix.split('/') {
                if seg.is_empty() {
                    return Some(bad(
                        "the prefix has an empty segment (`//` or a leading `/`)",
                    ));
                }
                if seg == ".." || seg == "." {
                    return Some(bad("the prefix may not contain `.` or `..` segments"));
                }
                if seg.chars().any(|c| c.is_control() || c == '\\') {
                    return Some(bad("the prefix may not contain control characters or `\\`"));
                }
                norm.push_str(seg);
                norm.push('/');
            }
        }
        if norm.len() > 512 {
            return Some(bad("the prefix is longer than 512 bytes"));
        }
        Some(Ok(S3Url {
            flavor,
            bucket: bucket.to_string(),
            prefix: norm,
        }))
    }
}

/// S3 bucket naming rules (which OSS's are a subset of): 3-63 characters of lower-case
/// letters, digits, `-` and `.`, starting and ending with a letter or digit, no `..`, not
/// an IP address.
fn check_bucket(b: &str) -> std::result::Result<(), String> {
    if b.is_empty() {
        return Err("no bucket name".into());
    }
    if !(3..=63).contains(&b.len()) {
        return Err(format!("bucket name {b:?} must be 3 to 63 characters long"));
    }
    if !b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
    {
        return Err(format!(
            "bucket name {b:?} may hold only lower-case letters, digits, `-` and `.`"
        ));
    }
    let edge = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !edge(b.bytes().next()) || !edge(b.bytes().last()) {
        return Err(format!(
            "bucket name {b:?} must start and end with a letter or digit"
        ));
    }
    if b.contains("..") {
        return Err(format!("bucket name {b:?} may not contain `..`"));
    }
    if b.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!("bucket name {b:?} may not be an IP address"));
    }
    Ok(())
}

/// Everything a client needs to reach one bucket.
pub struct S3Config {
    pub flavor: Flavor,
    pub bucket: String,
    pub prefix: String,
    /// `scheme://host[:port]`, no path.
    pub endpoint: reqwest::Url,
    pub region: String,
    pub credentials: Credentials,
    /// `BUCKET.host` (AWS without a custom endpoint, OSS) rather than `host/BUCKET`.
    pub virtual_host: bool,
    /// Extra trust roots from `AWS_CA_BUNDLE`.
    pub extra_roots: Vec<reqwest::Certificate>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("url", &self.url())
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .field("credentials", &self.credentials)
            .field("virtual_host", &self.virtual_host)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl S3Config {
    /// The configuration for `url` from the process environment.
    pub fn from_env(url: &S3Url) -> Result<S3Config> {
        S3Config::from_vars(url, |n| std::env::var(n).ok())
    }

    /// [`S3Config::from_env`] with the variables read through `var` (tests use a map: the
    /// environment is shared between test threads).
    pub fn from_vars(url: &S3Url, var: impl Fn(&str) -> Option<String>) -> Result<S3Config> {
        let var = |n: &str| var(n).filter(|v| !v.trim().is_empty());
        let usage = |why: String| Error::Usage(format!("{url}: {why}"));
        let (endpoint, region, credentials, virtual_host) = match url.flavor {
            Flavor::S3 => {
                let region = var("AWS_REGION")
                    .or_else(|| var("AWS_DEFAULT_REGION"))
                    .unwrap_or_else(|| "us-east-1".to_string());
                check_region(&region).map_err(|w| usage(format!("AWS_REGION: {w}")))?;
                let custom = var("AWS_ENDPOINT_URL_S3")
                    .map(|e| ("AWS_ENDPOINT_URL_S3", e))
                    .or_else(|| var("AWS_ENDPOINT_URL").map(|e| ("AWS_ENDPOINT_URL", e)));
                let (endpoint, virtual_host) = match custom {
                    Some((name, e)) => (
                        parse_endpoint(&e).map_err(|w| usage(format!("{name}: {w}")))?,
                        false,
                    ),
                    None => {
                        let e = parse_endpoint(&format!("https://s3.{region}.amazonaws.com"))
                            .map_err(usage)?;
                        // A dotted bucket name breaks the wildcard certificate of
                        // virtual-hosted names: path style then.
                        (e, !url.bucket.contains('.'))
                    }
                };
                let (id, secret) = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                    (Some(id), Some(s)) => (id, Zeroizing::new(s)),
                    _ => {
                        return Err(usage(
                            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                             (and AWS_SESSION_TOKEN for temporary credentials)"
                                .into(),
                        ))
                    }
                };
                let token = var("AWS_SESSION_TOKEN").map(Zeroizing::new);
                (
                    endpoint,
                    region,
                    Credentials::new(id, secret, token),
                    virtual_host,
                )
            }
            Flavor::Oss => {
                let endpoint = match var("ALIBABA_CLOUD_OSS_ENDPOINT") {
                    Some(e) => Some(
                        parse_endpoint(&e)
                            .map_err(|w| usage(format!("ALIBABA_CLOUD_OSS_ENDPOINT: {w}")))?,
                    ),
                    None => None,
                };
                let region = var("ALIBABA_CLOUD_REGION_ID")
                    .or_else(|| endpoint.as_ref().and_then(|e| oss_region_of(e.host_str()?)));
                let Some(region) = region else {
                    return Err(usage(
                        "no OSS region: set ALIBABA_CLOUD_REGION_ID (e.g. cn-hangzhou) or \
                         ALIBABA_CLOUD_OSS_ENDPOINT"
                            .into(),
                    ));
                };
                check_region(&region)
                    .map_err(|w| usage(format!("ALIBABA_CLOUD_REGION_ID: {w}")))?;
                let endpoint = match endpoint {
                    Some(e) => e,
                    None => parse_endpoint(&format!("https://s3.oss-{region}.aliyuncs.com"))
                        .map_err(usage)?,
                };
                let (id, secret) = match (
                    var("ALIBABA_CLOUD_ACCESS_KEY_ID"),
                    var("ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
                ) {
                    (Some(id), Some(s)) => (id, Zeroizing::new(s)),
                    _ => {
                        return Err(usage(
                            "no credentials: set ALIBABA_CLOUD_ACCESS_KEY_ID and \
                             ALIBABA_CLOUD_ACCESS_KEY_SECRET"
                                .into(),
                        ))
                    }
                };
                let token = var("ALIBABA_CLOUD_SECURITY_TOKEN").map(Zeroizing::new);
                // OSS answers only virtual-hosted requests.
                (endpoint, region, Credentials::new(id, secret, token), true)
            }
        };
        let mut extra_roots = Vec::new();
        if let Some(path) = var("AWS_CA_BUNDLE") {
            let pem = std::fs::read(&path).map_err(|e| {
                usage(format!(
                    "AWS_CA_BUNDLE={path}: {e}; point it at a PEM file of CA certificates or unset it"
                ))
            })?;
            extra_roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                usage(format!(
                    "AWS_CA_BUNDLE={path}: not a PEM bundle of certificates ({e})"
                ))
            })?;
        }
        Ok(S3Config {
            flavor: url.flavor,
            bucket: url.bucket.clone(),
            prefix: url.prefix.clone(),
            endpoint,
            region,
            credentials,
            virtual_host,
            extra_roots,
        })
    }

    /// The vault's URL as messages show it.
    pub fn url(&self) -> String {
        S3Url {
            flavor: self.flavor,
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
        }
        .to_string()
    }

    /// An object's (full key's) URL as messages show it; the bucket's for `None`.
    pub fn object_url(&self, key: Option<&str>) -> String {
        format!(
            "{}://{}/{}",
            self.flavor.scheme(),
            self.bucket,
            key.unwrap_or("")
        )
    }

    /// The full key of a vault name.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The request URL (path percent-encoded), the `Host` header as the client sends it,
    /// and the raw path SigV4 encodes, for the bucket (`None`) or an object.
    pub fn request_target(&self, key: Option<&str>) -> (String, String, String) {
        let host = self.endpoint.host_str().unwrap_or_default();
        let port = self
            .endpoint
            .port()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let (host, path) = if self.virtual_host {
            (
                format!("{}.{host}{port}", self.bucket),
                format!("/{}", key.unwrap_or("")),
            )
        } else {
            let path = match key {
                Some(k) => format!("/{}/{k}", self.bucket),
                None => format!("/{}", self.bucket),
            };
            (format!("{host}{port}"), path)
        };
        let url = format!(
            "{}://{host}{}",
            self.endpoint.scheme(),
            sigv4::uri_encode(&path, true)
        );
        (url, host, path)
    }

    /// The variables that hold the credentials, for advice.
    pub fn credential_vars(&self) -> &'static str {
        match self.flavor {
            Flavor::S3 => "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            Flavor::Oss => "ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        }
    }

    /// The variables that name the endpoint, for advice.
    pub fn endpoint_vars(&self) -> &'static str {
        match self.flavor {
            Flavor::S3 => "AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL, AWS_REGION)",
            Flavor::Oss => "ALIBABA_CLOUD_OSS_ENDPOINT (or ALIBABA_CLOUD_REGION_ID)",
        }
    }
}

fn check_region(r: &str) -> std::result::Result<(), String> {
    if r.is_empty()
        || !r
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!("invalid region {r:?}"));
    }
    Ok(())
}

/// `http(s)://host[:port]`, with no user info, path or query.
fn parse_endpoint(e: &str) -> std::result::Result<reqwest::Url, String> {
    let e = e.trim().trim_end_matches('/');
    if e.contains('@') {
        // Not echoed: user info in a URL is usually a password.
        return Err("credentials in the endpoint URL are not accepted".into());
    }
    let url = reqwest::Url::parse(&format!("{e}/")).map_err(|err| format!("{e:?}: {err}"))?;
    if !matches!(url.scheme(), "http" | "https")
        || url.path() != "/"
        || url.query().is_some()
        || url.host_str().is_none()
    {
        return Err(format!(
            "{e:?} is not an endpoint: expected http(s)://host[:port] with no path"
        ));
    }
    Ok(url)
}

/// `cn-hangzhou` from `oss-cn-hangzhou.aliyuncs.com`, `s3.oss-cn-hangzhou.aliyuncs.com` or
/// their `-internal` forms.
fn oss_region_of(host: &str) -> Option<String> {
    let h = host.strip_prefix("s3.").unwrap_or(host);
    let r = h.strip_prefix("oss-")?.strip_suffix(".aliyuncs.com")?;
    Some(r.strip_suffix("-internal").unwrap_or(r).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn url(s: &str) -> Result<S3Url> {
        S3Url::parse(s).expect("a storage URL")
    }

    #[test]
    fn urls_parse_and_bad_ones_are_usage_errors() {
        assert!(S3Url::parse("/tmp/vault").is_none());
        assert!(S3Url::parse("s3:/x").is_none());
        let u = url("s3://vaults/backups/host1/").unwrap();
        assert_eq!(u.bucket, "vaults");
        assert_eq!(u.prefix, "backups/host1/");
        assert_eq!(u.to_string(), "s3://vaults/backups/host1");
        let u = url("oss://my-bucket").unwrap();
        assert_eq!((u.flavor, u.prefix.as_str()), (Flavor::Oss, ""));
        assert_eq!(url("s3://vaults/").unwrap().prefix, "");
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Vaults/x",
            "s3://va_ults",
            "s3://-vaults",
            "s3://va..ults",
            "s3://192.168.1.1/x",
            "s3://vaults/a/../b",
            "s3://vaults/..",
            "s3://vaults//a",
            "s3://vaults/a/./b",
        ] {
            match url(bad) {
                Err(Error::Usage(m)) => assert!(m.contains(bad), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn locations_name_storage_urls() {
        use crate::store::Location;
        use std::ffi::OsStr;
        let l = Location::parse(OsStr::new("s3://vaults/a/b")).unwrap();
        assert!(matches!(&l, Location::S3(u) if u.prefix == "a/b/"));
        assert_eq!(l.to_string(), "s3://vaults/a/b");
        assert!(l.local_dir().is_none());
        assert!(matches!(
            Location::parse(OsStr::new("oss://x")),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            Location::parse(OsStr::new("vault-dir")),
            Ok(Location::Local(_))
        ));
    }

    fn cfg(u: &str, vars: &[(&str, &str)]) -> Result<S3Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        S3Config::from_vars(&url(u).unwrap(), |n| map.get(n).cloned())
    }

    const KEYS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "AKID"),
        ("AWS_SECRET_ACCESS_KEY", "topsecret"),
    ];

    #[test]
    fn environment_follows_the_aws_sdk_conventions() {
        // No endpoint: AWS itself, virtual-hosted, region defaulted.
        let c = cfg("s3://vaults/p", &KEYS).unwrap();
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.endpoint.as_str(), "https://s3.us-east-1.amazonaws.com/");
        let (u, host, path) = c.request_target(Some("p/a b"));
        assert_eq!(host, "vaults.s3.us-east-1.amazonaws.com");
        assert_eq!(path, "/p/a b");
        assert_eq!(u, "https://vaults.s3.us-east-1.amazonaws.com/p/a%20b");
        // AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL; path style with a custom one.
        let mut v = KEYS.to_vec();
        v.extend([
            ("AWS_ENDPOINT_URL", "http://other:1"),
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:8333/"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
        ]);
        let c = cfg("s3://vaults/p", &v).unwrap();
        assert_eq!(c.region, "eu-west-1");
        let (u, host, _) = c.request_target(Some("p/k"));
        assert_eq!(host, "127.0.0.1:8333");
        assert_eq!(u, "http://127.0.0.1:8333/vaults/p/k");
        assert_eq!(c.request_target(None).0, "http://127.0.0.1:8333/vaults");
        v.push(("AWS_REGION", "ap-south-1"));
        assert_eq!(cfg("s3://vaults/p", &v).unwrap().region, "ap-south-1");
        // The secret is never shown.
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("topsecret") && dbg.contains("AKID"), "{dbg}");
        // Missing credentials name the variables; a bad endpoint names its variable.
        match cfg("s3://vaults/p", &KEYS[..1]) {
            Err(Error::Usage(m)) => {
                assert!(m.contains("AWS_SECRET_ACCESS_KEY") && m.contains("s3://vaults/p"))
            }
            other => panic!("{other:?}"),
        }
        let mut v = KEYS.to_vec();
        v.push(("AWS_ENDPOINT_URL_S3", "ftp://x/y"));
        assert!(
            matches!(cfg("s3://vaults", &v), Err(Error::Usage(m)) if m.contains("AWS_ENDPOINT_URL_S3"))
        );
        let mut v = KEYS.to_vec();
        v.push(("AWS_CA_BUNDLE", "/nonexistent/ca.pem"));
        assert!(
            matches!(cfg("s3://vaults", &v), Err(Error::Usage(m)) if m.contains("AWS_CA_BUNDLE"))
        );
    }

    #[test]
    fn oss_uses_its_own_variables_and_virtual_hosts() {
        let keys = [
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "osssecret"),
        ];
        match cfg("oss://bkt/v", &keys) {
            Err(Error::Usage(m)) => assert!(m.contains("ALIBABA_CLOUD_REGION_ID")),
            other => panic!("{other:?}"),
        }
        let mut v = keys.to_vec();
        v.push(("ALIBABA_CLOUD_REGION_ID", "cn-hangzhou"));
        let c = cfg("oss://bkt/v", &v).unwrap();
        assert_eq!(c.region, "cn-hangzhou");
        assert_eq!(
            c.request_target(Some("v/x")).1,
            "bkt.s3.oss-cn-hangzhou.aliyuncs.com"
        );
        let mut v = keys.to_vec();
        v.push((
            "ALIBABA_CLOUD_OSS_ENDPOINT",
            "https://oss-eu-central-1-internal.aliyuncs.com",
        ));
        let c = cfg("oss://bkt/v", &v).unwrap();
        assert_eq!(c.region, "eu-central-1");
        assert!(
            matches!(cfg("oss://bkt", &[v[0], v[2]]), Err(Error::Usage(m)) if m.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET"))
        );
        // AWS credentials are not OSS credentials.
        assert!(cfg("oss://bkt", &KEYS).is_err());
    }
}
