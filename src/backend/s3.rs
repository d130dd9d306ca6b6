//! S3-compatible object storage through OpenDAL.
//!
//! Location `s3://bucket/prefix`. The endpoint comes from `AWS_ENDPOINT_URL` (MinIO, B2,
//! Hetzner, R2…; path-style addressing), the region from `AWS_REGION` (default
//! `us-east-1`), credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
//! (`AWS_SESSION_TOKEN` when set). Transient errors are retried with exponential backoff.

use super::{Backend, FileKind, Listed};
use crate::error::{Error, ErrorKind};
use anyhow::Result;
use opendal::{layers::RetryLayer, layers::TimeoutLayer, services::S3, Operator};
use std::time::Duration;

pub struct S3Backend {
    bucket: String,
    prefix: String,
    op: Operator,
    rt: tokio::runtime::Runtime,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3Backend {
    /// `rest` is `bucket/prefix` (the part after `s3://`).
    pub fn open(rest: &str) -> Result<Self> {
        opendal::install_default();
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::usage("s3 location needs a bucket: s3://bucket/prefix").into());
        }
        let prefix = prefix.trim_matches('/').to_string();
        let mut b = S3::default()
            .bucket(bucket)
            .root(&format!("/{prefix}"))
            .region(&env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into()))
            .disable_config_load()
            .disable_ec2_metadata();
        if let Some(ep) = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")) {
            b = b.endpoint(&ep);
        }
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                b = b.access_key_id(&id).secret_access_key(&secret);
                if let Some(tok) = env("AWS_SESSION_TOKEN") {
                    b = b.session_token(&tok);
                }
            }
            _ => {
                return Err(Error::usage(
                    "S3 needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                )
                .into())
            }
        }
        let op = Operator::new(b)
            .map_err(|e| Error::usage(format!("invalid S3 configuration: {e}")))?
            .layer(TimeoutLayer::new().with_timeout(Duration::from_secs(120)))
            .layer(
                RetryLayer::new()
                    .with_max_times(5)
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(10))
                    .with_jitter(),
            );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(S3Backend {
            bucket: bucket.to_string(),
            prefix,
            op,
            rt,
        })
    }

    fn err(&self, e: opendal::Error, what: &str, path: &str) -> anyhow::Error {
        let loc = format!("s3://{}/{}{}", self.bucket, self.prefix_slash(), path);
        let (kind, hint) = match e.kind() {
            opendal::ErrorKind::NotFound => (ErrorKind::NotFound, ""),
            opendal::ErrorKind::PermissionDenied => (
                ErrorKind::Storage,
                " (access denied: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket policy)",
            ),
            opendal::ErrorKind::ConfigInvalid => (ErrorKind::Usage, ""),
            _ => (ErrorKind::Storage, ""),
        };
        let detail = if kind == ErrorKind::Storage && e.kind() != opendal::ErrorKind::PermissionDenied {
            let msg = e.to_string();
            if msg.contains("InvalidAccessKeyId") || msg.contains("SignatureDoesNotMatch") || msg.contains("403") {
                return Error::new(
                    ErrorKind::Storage,
                    format!("cannot {what} {loc}: the storage refused the credentials (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY): {msg}"),
                )
                .into();
            }
            if msg.contains("NoSuchBucket") {
                return Error::new(
                    ErrorKind::NotFound,
                    format!("cannot {what} {loc}: bucket {} does not exist", self.bucket),
                )
                .into();
            }
            msg
        } else {
            e.to_string()
        };
        Error::new(kind, format!("cannot {what} {loc}: {detail}{hint}")).into()
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
        let path = kind.path(name);
        let buf = bytes::Bytes::copy_from_slice(data);
        self.rt
            .block_on(self.op.write(&path, buf))
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
            .map_err(|e| self.err(e, "read", &path))?
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
            out.push(Listed { name, size });
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
