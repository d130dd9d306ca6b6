//! S3-compatible object storage through OpenDAL.
//!
//! Location `s3://bucket/prefix`. The endpoint comes from `AWS_ENDPOINT_URL` (MinIO, B2,
//! Hetzner, R2…; path-style addressing), the region from `AWS_REGION` (default
//! `us-east-1`), credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
//! (`AWS_SESSION_TOKEN` when set); each falls back to the config file's `[s3]` table
//! ([`S3Settings`]). Transient errors are retried with exponential backoff;
//! an upload may take time in proportion to its size (see [`upload_timeout`]).

use super::{Backend, FileKind, Listed};
use crate::error::{Error, ErrorKind};
use anyhow::Result;
use opendal::{layers::RetryLayer, layers::TimeoutLayer, services::S3, Operator};
use std::time::Duration;

pub struct S3Backend {
    bucket: String,
    prefix: String,
    /// `AWS_ENDPOINT_URL`, for messages.
    endpoint: Option<String>,
    /// The service with OpenDAL's own layers only; `op` and the upload operators add ours.
    base: Operator,
    /// The same with the configured storage class, for data packs.
    packs: Operator,
    /// For everything but uploads.
    op: Operator,
    rt: tokio::runtime::Runtime,
}

/// Limit for control requests (stat, delete) and for each step of a read or listing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The slowest upload we still wait for, in bytes per second (about 1 Mbit/s).
const MIN_UPLOAD_RATE: u64 = 128 << 10;

/// How long one attempt at uploading `len` bytes may take. OpenDAL sends a whole object in
/// one PUT inside a single IO step, so a fixed IO timeout would fail every pack upload on a
/// link too slow to move a pack within it (10 s by default: 32 MiB packs need 27 Mbit/s).
fn upload_timeout(len: usize) -> Duration {
    Duration::from_secs(60 + len as u64 / MIN_UPLOAD_RATE)
}

/// `base` with a timeout (IO steps limited to `io_timeout`) and retries of transient errors.
fn layered(base: &Operator, io_timeout: Duration) -> Operator {
    // The timeout layer goes below the retry layer, so that a timed-out attempt is retried.
    base.clone()
        .layer(
            TimeoutLayer::new()
                .with_timeout(REQUEST_TIMEOUT)
                .with_io_timeout(io_timeout),
        )
        .layer(
            RetryLayer::new()
                .with_max_times(5)
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter(),
        )
}

/// The S3 error code (`NoSuchBucket`, `SignatureDoesNotMatch`…) of a failed request, when
/// the response had an XML error body. OpenDAL puts the parsed body in the message as
/// `S3Error { code: "…", … }`.
fn s3_code(e: &opendal::Error) -> Option<&str> {
    let m = e.message();
    let rest = &m[m.find("code: \"")? + 7..];
    Some(&rest[..rest.find('"')?]).filter(|c| !c.is_empty())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// How to reach S3: the config file's `[s3]` table, or (after [`S3Settings::resolve`])
/// the environment over it.
#[derive(Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// The S3 storage class of data packs (`STANDARD_IA`, `ONEZONE_IA`, `GLACIER_IR`, …);
    /// everything else stays STANDARD (it is read by every command). Default: the bucket's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Accept a storage class whose objects must be retrieved before they can be read
    /// (`GLACIER`, `DEEP_ARCHIVE`): restores, checks and prunes then fail until they are.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_retrieval_class: bool,
}

/// Storage classes whose objects cannot be read without a retrieval first.
const RETRIEVAL_CLASSES: &[&str] = &["GLACIER", "DEEP_ARCHIVE"];

impl S3Settings {
    /// Refuse a storage class that needs a retrieval before reads, unless allowed.
    pub fn check_storage_class(&self) -> Result<()> {
        match self.storage_class.as_deref() {
            Some(c) if c.trim().is_empty() => {
                Err(Error::usage("storage_class is empty: remove it or name a class").into())
            }
            Some(c) if RETRIEVAL_CLASSES.contains(&c) && !self.allow_retrieval_class => {
                Err(Error::usage(format!(
                    "storage_class = {c:?}: objects of that class must be retrieved before they \
                     can be read, so restores, drills, checks and prunes would fail; use \
                     GLACIER_IR or STANDARD_IA, or set allow_retrieval_class = true if that is \
                     what you want"
                ))
                .into())
            }
            _ => Ok(()),
        }
    }
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("storage_class", &self.storage_class)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// The environment's `AWS_*` variables over these settings. The credentials go
    /// together: the environment's key pair (and token) when it has both halves.
    pub fn resolve(&self) -> S3Settings {
        let (access_key_id, secret_access_key, session_token) =
            match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(id), Some(secret)) => (Some(id), Some(secret), env("AWS_SESSION_TOKEN")),
                _ => (
                    self.access_key_id.clone(),
                    self.secret_access_key.clone(),
                    self.session_token.clone(),
                ),
            };
        S3Settings {
            endpoint: env("AWS_ENDPOINT_URL_S3")
                .or_else(|| env("AWS_ENDPOINT_URL"))
                .or_else(|| self.endpoint.clone()),
            region: env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .or_else(|| self.region.clone()),
            access_key_id,
            secret_access_key,
            session_token,
            storage_class: self.storage_class.clone(),
            allow_retrieval_class: self.allow_retrieval_class,
        }
    }
}

impl S3Backend {
    /// `rest` is `bucket/prefix` (the part after `s3://`); `settings` are already
    /// resolved ([`S3Settings::resolve`]).
    pub fn open(rest: &str, settings: &S3Settings) -> Result<Self> {
        opendal::install_default();
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::usage("s3 location needs a bucket: s3://bucket/prefix").into());
        }
        let prefix = prefix.trim_matches('/').to_string();
        settings.check_storage_class()?;
        let builder = || -> Result<S3> {
            let mut b = S3::default()
                .bucket(bucket)
                .root(&format!("/{prefix}"))
                .region(settings.region.as_deref().unwrap_or("us-east-1"))
                .disable_config_load()
                .disable_ec2_metadata();
            if let Some(ep) = &settings.endpoint {
                b = b.endpoint(ep);
            }
            match (&settings.access_key_id, &settings.secret_access_key) {
                (Some(id), Some(secret)) => {
                    b = b.access_key_id(id).secret_access_key(secret);
                    if let Some(tok) = &settings.session_token {
                        b = b.session_token(tok);
                    }
                }
                _ => return Err(Error::usage(
                    "S3 needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
                         access_key_id and secret_access_key in the config file's [s3] table",
                )
                .into()),
            }
            Ok(b)
        };
        let packs = match &settings.storage_class {
            Some(class) => Operator::new(builder()?.default_storage_class(class)),
            None => Operator::new(builder()?),
        }
        .map_err(|e| Error::usage(format!("invalid S3 configuration: {e}")))?;
        let base = Operator::new(builder()?)
            .map_err(|e| Error::usage(format!("invalid S3 configuration: {e}")))?;
        let op = layered(&base, REQUEST_TIMEOUT);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(S3Backend {
            bucket: bucket.to_string(),
            prefix,
            endpoint: settings.endpoint.clone(),
            base,
            packs,
            op,
            rt,
        })
    }

    fn err(&self, e: opendal::Error, what: &str, path: &str) -> anyhow::Error {
        let loc = format!("s3://{}/{}{}", self.bucket, self.prefix_slash(), path);
        tracing::debug!("S3 request failed: {what} {loc}: {e:?}");
        let at = self
            .endpoint
            .as_deref()
            .map(|ep| format!(" at {ep}"))
            .unwrap_or_default();
        let (kind, msg) = match (e.kind(), s3_code(&e)) {
            // OpenDAL calls a missing bucket ConfigInvalid. It is not "object not found"
            // either: callers take NotFound to mean that one object is absent.
            (_, Some("NoSuchBucket")) => (
                ErrorKind::Storage,
                format!(
                    "bucket {:?} does not exist{at}: create it, or check the location and AWS_ENDPOINT_URL",
                    self.bucket
                ),
            ),
            (
                _,
                Some(
                    code @ ("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "NotSignedUp" | "InvalidToken"
                    | "ExpiredToken"),
                ),
            ) => (
                ErrorKind::Storage,
                format!(
                    "the storage{at} refused the credentials ({code}): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY{}",
                    if env("AWS_SESSION_TOKEN").is_some() { "/AWS_SESSION_TOKEN" } else { "" }
                ),
            ),
            (_, Some(code @ "AuthorizationHeaderMalformed")) => (
                ErrorKind::Storage,
                format!("the storage{at} refused the request ({code}): check AWS_REGION and the credentials: {e}"),
            ),
            (_, Some(code @ "RequestTimeTooSkewed")) => (
                ErrorKind::Storage,
                format!("the storage{at} refused the request ({code}): this machine's clock is wrong"),
            ),
            (opendal::ErrorKind::PermissionDenied, code) => (
                ErrorKind::Storage,
                format!(
                    "access denied{at} ({}): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket policy",
                    code.unwrap_or("HTTP 403")
                ),
            ),
            (opendal::ErrorKind::NotFound, _) => (ErrorKind::NotFound, e.to_string()),
            (opendal::ErrorKind::ConfigInvalid, _) => (ErrorKind::Usage, e.to_string()),
            _ => (ErrorKind::Storage, e.to_string()),
        };
        Error::new(kind, format!("cannot {what} {loc}: {msg}")).into()
    }

    fn prefix_slash(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn create(&self) -> Result<()> {
        Ok(())
    }

    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.write_parts(kind, name, vec![data.to_vec()])
    }

    fn write_parts(&self, kind: FileKind, name: &str, parts: Vec<Vec<u8>>) -> Result<()> {
        let path = kind.path(name);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // Non-contiguous buffer: the parts are sent without being concatenated.
        let buf = opendal::Buffer::from(
            parts
                .into_iter()
                .map(bytes::Bytes::from)
                .collect::<Vec<_>>(),
        );
        let service = match kind {
            FileKind::Pack => &self.packs,
            _ => &self.base,
        };
        let op = layered(service, upload_timeout(len));
        self.rt
            .block_on(op.write(&path, buf))
            .map(|_| ())
            .map_err(|e| self.err(e, "write", &path))
    }

    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let path = kind.path(name);
        self.rt
            .block_on(self.op.read(&path))
            .map(|b| b.to_vec())
            .map_err(|e| self.err(e, "read", &path))
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = kind.path(name);
        let buf = self
            .rt
            .block_on(async { self.op.read_with(&path).range(offset..offset + len).await })
            .map_err(|e| match e.kind() {
                // The range starts past the end: the object is shorter than the index says.
                opendal::ErrorKind::RangeNotSatisfied => {
                    Error::integrity(format!("{path} is shorter than the index says")).into()
                }
                _ => self.err(e, "read", &path),
            })?
            .to_vec();
        if buf.len() as u64 != len {
            return Err(Error::integrity(format!("{path} is shorter than the index says")).into());
        }
        Ok(buf)
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>> {
        let path = kind.path(name);
        match self.rt.block_on(self.op.stat(&path)) {
            Ok(m) => Ok(Some(m.content_length())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(e, "stat", &path)),
        }
    }

    fn list(&self, kind: FileKind) -> Result<Vec<Listed>> {
        let dir = format!("{}/", kind.dir());
        let entries = self
            .rt
            .block_on(async { self.op.list_with(&dir).recursive(true).await });
        let entries = match entries {
            Ok(e) => e,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e, "list", &dir)),
        };
        let mut out = Vec::new();
        for e in entries {
            if e.metadata().is_dir() || kind == FileKind::Config {
                continue;
            }
            let name = e.name().to_string();
            if name.is_empty() {
                continue;
            }
            let size = e.metadata().content_length();
            let modified = e.metadata().last_modified().and_then(|t| {
                let t = t.into_inner();
                chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
            });
            out.push(Listed {
                name,
                size,
                modified,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn concurrency(&self) -> usize {
        6
    }

    fn remove(&self, kind: FileKind, name: &str) -> Result<()> {
        let path = kind.path(name);
        match self.rt.block_on(self.op.delete(&path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(e, "remove", &path)),
        }
    }
}
