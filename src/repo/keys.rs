//! Key slots: the master key wrapped under a passphrase with Argon2id.
//!
//! Each slot is a plaintext JSON object in `keys/<random id>`:
//! `{version, kind, created, hostname, username, kdf{…, salt}, data}` where `data` is the
//! master key and repository id sealed with XChaCha20-Poly1305 under the Argon2id output.
//! Changing a passphrase adds or removes a slot; the data is never re-encrypted.
//!
//! `kind` is `"passphrase"` (the full key) or `"writer"`: a write-only slot, whose `data`
//! wraps the blob-id and meta keys instead, so that a backup host holding it can write but
//! not read back (FORMAT.md, section 3).

use super::crypto::{b64vec, MasterKey, WrappingKey, WriterKey};
use super::id::Id;
use crate::error::{Error, ErrorKind};
use anyhow::Result;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// Cheap parameters for the library's own unit tests.
    pub fn insecure_for_tests() -> Self {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kdf {
    pub algorithm: String,
    #[serde(flatten)]
    pub params: KdfParams,
    #[serde(with = "b64vec")]
    pub salt: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    /// `passphrase` (the full key) or `writer` (write-only).
    pub kind: String,
    pub created: DateTime<Utc>,
    pub hostname: String,
    pub username: String,
    pub kdf: Kdf,
    #[serde(with = "b64vec")]
    pub data: Vec<u8>,
}

/// What a key slot wraps: the full key or a writer's.
#[derive(Serialize, Deserialize)]
struct Wrapped {
    repository: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    master: Option<MasterKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    writer: Option<WriterKey>,
}

/// The key a slot holds.
#[derive(Debug, Clone)]
pub enum SlotKey {
    /// A passphrase slot: the master key.
    Full(MasterKey),
    /// A write-only slot.
    Writer(WriterKey),
}

impl SlotKey {
    /// The slot kind that holds this key.
    pub fn kind(&self) -> &'static str {
        match self {
            SlotKey::Full(_) => PASSPHRASE,
            SlotKey::Writer(_) => WRITER,
        }
    }
}

/// The kind of a passphrase (full-key) slot.
pub const PASSPHRASE: &str = "passphrase";
/// The kind of a write-only slot.
pub const WRITER: &str = "writer";

/// The most a key slot may ask of the key derivation. A slot is read before anything in it
/// can be authenticated, so its parameters are untrusted: a planted slot asking for 4 TiB
/// of memory or 2^32 passes must not take the machine down when coffer tries it. These
/// bounds are 16 times coffer's own defaults (64 MiB, 3 passes, 1 lane) or more.
pub const MAX_KDF: KdfParams = KdfParams {
    memory_kib: 1024 * 1024,
    iterations: 64,
    parallelism: 16,
};

fn derive(passphrase: &[u8], kdf: &Kdf) -> Result<WrappingKey> {
    if kdf.algorithm != "argon2id" {
        return Err(Error::integrity(format!("unknown key derivation {:?}", kdf.algorithm)).into());
    }
    let p = kdf.params;
    if p.memory_kib > MAX_KDF.memory_kib
        || p.iterations > MAX_KDF.iterations
        || p.parallelism > MAX_KDF.parallelism
    {
        return Err(Error::integrity(format!(
            "key derivation parameters out of bounds ({} KiB, {} passes, {} lanes; at most {} KiB, {} passes, {} lanes)",
            p.memory_kib,
            p.iterations,
            p.parallelism,
            MAX_KDF.memory_kib,
            MAX_KDF.iterations,
            MAX_KDF.parallelism
        ))
        .into());
    }
    let params = argon2::Params::new(
        kdf.params.memory_kib,
        kdf.params.iterations,
        kdf.params.parallelism,
        Some(32),
    )
    .map_err(|e| Error::integrity(format!("invalid key derivation parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(passphrase, &kdf.salt, &mut out)
        .map_err(|e| anyhow::anyhow!("key derivation failed: {e}"))?;
    Ok(WrappingKey::from_bytes(out))
}

impl KeyFile {
    pub fn create(
        passphrase: &[u8],
        repo_id: Id,
        key: &SlotKey,
        params: KdfParams,
    ) -> Result<KeyFile> {
        if passphrase.is_empty() {
            return Err(Error::usage("an empty passphrase is not allowed").into());
        }
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let kdf = Kdf {
            algorithm: "argon2id".into(),
            params,
            salt,
        };
        let wk = derive(passphrase, &kdf)?;
        let (master, writer) = match key {
            SlotKey::Full(m) => (Some(m.clone()), None),
            SlotKey::Writer(w) => (None, Some(w.clone())),
        };
        let plain = serde_json::to_vec(&Wrapped {
            repository: repo_id,
            master,
            writer,
        })?;
        Ok(KeyFile {
            version: 1,
            kind: key.kind().into(),
            created: Utc::now(),
            hostname: crate::repo::hostname(),
            username: crate::repo::username(),
            kdf,
            data: wk.seal(&plain),
        })
    }

    /// Unwrap with a passphrase; `Ok(None)` when the passphrase does not fit this slot.
    pub fn unwrap(&self, passphrase: &[u8]) -> Result<Option<(Id, SlotKey)>> {
        if self.kind != PASSPHRASE && self.kind != WRITER {
            return Ok(None);
        }
        let wk = derive(passphrase, &self.kdf)?;
        let Ok(plain) = wk.open(&self.data) else {
            return Ok(None);
        };
        let malformed =
            |e: String| Error::new(ErrorKind::Integrity, format!("key slot is malformed: {e}"));
        let w: Wrapped = serde_json::from_slice(&plain).map_err(|e| malformed(e.to_string()))?;
        let key = match (self.kind.as_str(), w.master, w.writer) {
            (PASSPHRASE, Some(m), None) => SlotKey::Full(m),
            (WRITER, None, Some(w)) => SlotKey::Writer(w),
            _ => {
                return Err(
                    malformed(format!("it does not hold what a {} slot holds", self.kind)).into(),
                )
            }
        };
        Ok(Some((w.repository, key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn wrap_unwrap() {
        let m = MasterKey::generate();
        let id = Id::random();
        let full = SlotKey::Full(m.clone());
        let k = KeyFile::create(b"pw", id, &full, KdfParams::insecure_for_tests()).unwrap();
        assert_eq!(k.kind, "passphrase");
        let (rid, SlotKey::Full(mk)) = k.unwrap(b"pw").unwrap().unwrap() else {
            panic!("a passphrase slot holds the full key")
        };
        assert_eq!(rid, id);
        assert_eq!(mk.keys().blob_id(b"x"), m.keys().blob_id(b"x"));
        assert!(k.unwrap(b"wrong").unwrap().is_none());
        assert!(KeyFile::create(b"", id, &full, KdfParams::insecure_for_tests()).is_err());

        let writer = SlotKey::Writer(m.writer(&id));
        let w = KeyFile::create(b"wo", id, &writer, KdfParams::insecure_for_tests()).unwrap();
        assert_eq!(w.kind, "writer");
        assert!(matches!(
            w.unwrap(b"wo").unwrap(),
            Some((_, SlotKey::Writer(_)))
        ));
        // A slot whose kind says one thing and whose content another is damaged.
        let mut forged = w.clone();
        forged.kind = "passphrase".into();
        assert!(forged.unwrap(b"wo").is_err());
    }

    #[test]
    fn absurd_derivation_parameters_are_refused_before_deriving() {
        let m = SlotKey::Full(MasterKey::generate());
        let mut k =
            KeyFile::create(b"pw", Id::random(), &m, KdfParams::insecure_for_tests()).unwrap();
        for p in [
            KdfParams {
                memory_kib: u32::MAX,
                ..KdfParams::insecure_for_tests()
            },
            KdfParams {
                iterations: u32::MAX,
                ..KdfParams::insecure_for_tests()
            },
            KdfParams {
                parallelism: 1 << 20,
                ..KdfParams::insecure_for_tests()
            },
        ] {
            k.kdf.params = p;
            let e = k.unwrap(b"pw").unwrap_err();
            assert!(format!("{e:#}").contains("out of bounds"), "{e:#}");
        }
    }
}
