//! The master key, blob identifiers and authenticated encryption.
//!
//! Every object coffer stores (chunks, trees, pack headers, index files, snapshots, locks,
//! the repository config) is sealed with XChaCha20-Poly1305 with a fresh random 192-bit
//! nonce: `nonce (24) || ciphertext || tag (16)`. Blob identifiers are BLAKE3 keyed with a
//! secret key, so the storage provider cannot confirm that a known file is in the
//! repository by hashing it.
//!
//! A repository with write-only key slots (FORMAT.md, section 3) seals its metadata under
//! a *meta* key derived from the encryption key, and what writers store under keys agreed
//! with the repository's X25519 *recipient* key, which only the full key can derive: see
//! [`Keys`].

use super::id::Id;
use crate::error::{Error, ErrorKind};
use aws_lc_rs::{aead, agreement, hkdf};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed object has beyond its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// One XChaCha20-Poly1305 key.
#[derive(Clone)]
pub struct Cipher([u8; 32]);

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Cipher(b)
    }

    fn portable(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }

    /// XChaCha20-Poly1305 is ChaCha20-Poly1305 (RFC 8439) under the subkey HChaCha20
    /// derives from the key and the first 16 nonce bytes, with the nonce
    /// `0000 || last 8 bytes`. AWS-LC's assembly runs that about twice as fast as the
    /// portable crates, for sealing and opening alike.
    fn subkey_cipher(&self, nonce: &[u8]) -> (aead::LessSafeKey, aead::Nonce) {
        let subkey = chacha20::hchacha::<chacha20::cipher::consts::U10>(
            (&self.0).into(),
            chacha20::cipher::generic_array::GenericArray::from_slice(&nonce[..16]),
        );
        let mut short = [0u8; 12];
        short[4..].copy_from_slice(&nonce[16..NONCE_LEN]);
        let key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &subkey)
                .expect("ChaCha20-Poly1305 takes a 32-byte key"),
        );
        (key, aead::Nonce::assume_unique_for_key(short))
    }

    /// Encrypt `buf[NONCE_LEN..]` in place under a fresh random nonce written to
    /// `buf[..NONCE_LEN]`, then append the tag.
    fn seal_in_place(&self, buf: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        let (key, short) = self.subkey_cipher(&nonce);
        let tag = key
            .seal_in_place_separate_tag(short, aead::Aad::empty(), &mut buf[NONCE_LEN..])
            .expect("ChaCha20-Poly1305 seals any length coffer produces");
        buf.extend_from_slice(tag.as_ref());
    }

    /// Seal compressed plaintext in place (its buffer has the nonce room reserved).
    pub fn seal_encoded(&self, enc: compress::Encoded) -> Vec<u8> {
        let mut buf = enc.0;
        self.seal_in_place(&mut buf);
        buf
    }

    /// Seal with the portable XChaCha20-Poly1305 (the reference the AWS-LC path is tested
    /// against).
    #[cfg(test)]
    fn seal_portable(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        out.extend_from_slice(plaintext);
        let tag = self
            .portable()
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), b"", &mut out[NONCE_LEN..])
            .expect("XChaCha20-Poly1305 encrypts any length coffer produces");
        out.extend_from_slice(&tag);
        out
    }

    /// Seal `plaintext`: `nonce || ciphertext || tag`.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(OVERHEAD + plaintext.len());
        buf.extend_from_slice(&[0u8; NONCE_LEN]);
        buf.extend_from_slice(plaintext);
        self.seal_in_place(&mut buf);
        buf
    }

    /// Open a sealed object in place; returns the plaintext part of the buffer. Fails if a
    /// single bit was changed.
    pub fn open_in_place<'a>(&self, sealed: &'a mut [u8]) -> Result<&'a [u8], Error> {
        if sealed.len() < OVERHEAD {
            return Err(Error::integrity("encrypted object is truncated"));
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE_LEN);
        let (key, short) = self.subkey_cipher(nonce);
        let plain = key
            .open_in_place(short, aead::Aad::empty(), rest)
            .map_err(|_| {
                Error::integrity("authentication failed: the object was modified or damaged")
            })?;
        Ok(plain)
    }

    /// Open a sealed object; fails if a single bit was changed.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        if sealed.len() < OVERHEAD {
            return Err(Error::integrity("encrypted object is truncated"));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut buf = ct.to_vec();
        self.portable()
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                b"",
                &mut buf,
                Tag::from_slice(tag),
            )
            .map_err(|_| {
                Error::integrity("authentication failed: the object was modified or damaged")
            })?;
        Ok(buf)
    }
}

/// HKDF-SHA256 of `ikm` with `salt` and `info`, 32 bytes.
fn hkdf32(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let mut out = [0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], Len)
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF-SHA256 yields 32 bytes");
    out
}

/// The repository secret. Never stored in the clear: key slots wrap it.
#[derive(Clone, Serialize, Deserialize)]
pub struct MasterKey {
    #[serde(with = "b64")]
    encrypt: [u8; 32],
    #[serde(with = "b64")]
    id: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = MasterKey {
            encrypt: [0; 32],
            id: [0; 32],
        };
        rand::thread_rng().fill_bytes(&mut k.encrypt);
        rand::thread_rng().fill_bytes(&mut k.id);
        k
    }

    /// A new master key whose blob ids are those of `other` (the same `id` key) and whose
    /// encryption key is its own: for a repository created `init --like` another, so that
    /// `copy` between them deduplicates by id without re-chunking.
    pub fn generate_like(other: &Keys) -> Self {
        let mut k = MasterKey::generate();
        k.id = other.id;
        k
    }

    /// The cipher of the encryption key.
    pub fn cipher(&self) -> Cipher {
        Cipher(self.encrypt)
    }

    /// The meta key of a write-only repository (`HKDF(encrypt, id, "coffer meta v1")`).
    fn meta(&self, repository: &Id) -> Cipher {
        Cipher(hkdf32(&self.encrypt, &repository.0, b"coffer meta v1"))
    }

    /// The recipient's X25519 secret (`HKDF(encrypt, id, "coffer recipient v1")`).
    fn recipient_secret(&self, repository: &Id) -> [u8; 32] {
        hkdf32(&self.encrypt, &repository.0, b"coffer recipient v1")
    }

    /// The keys of a repository without write-only slots (metadata sealed under `encrypt`).
    pub fn keys(&self) -> Keys {
        Keys::new(self.id, self.cipher(), Some(self.clone()), None)
    }

    /// The keys of a write-only repository `repository`, with the full key.
    pub fn write_only_keys(&self, repository: &Id) -> Keys {
        let secret = self.recipient_secret(repository);
        let public = x25519_public(&secret);
        Keys::new(
            self.id,
            self.meta(repository),
            Some(self.clone()),
            Some(Recipient {
                public,
                secret: Some(secret),
            }),
        )
    }

    /// What a write-only slot of `repository` wraps.
    pub fn writer(&self, repository: &Id) -> WriterKey {
        WriterKey {
            id: self.id,
            meta: self.meta(repository).0,
        }
    }
}

/// What a write-only key slot wraps: the blob-id key and the meta key, nothing that opens
/// stored content.
#[derive(Clone, Serialize, Deserialize)]
pub struct WriterKey {
    #[serde(with = "b64")]
    id: [u8; 32],
    #[serde(with = "b64")]
    meta: [u8; 32],
}

impl std::fmt::Debug for WriterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterKey(..)")
    }
}

impl WriterKey {
    pub fn meta(&self) -> Cipher {
        Cipher(self.meta)
    }

    /// The keys of a writer, given the recipient public key from the (authenticated)
    /// config.
    pub fn keys(&self, recipient: [u8; 32]) -> Keys {
        Keys::new(
            self.id,
            Cipher(self.meta),
            None,
            Some(Recipient {
                public: recipient,
                secret: None,
            }),
        )
    }
}

/// The X25519 public key of `secret`.
pub fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    let k = agreement::PrivateKey::from_private_key(&agreement::X25519, secret)
        .expect("any 32 bytes are an X25519 secret");
    let p = k
        .compute_public_key()
        .expect("an X25519 public key can be computed");
    p.as_ref()
        .try_into()
        .expect("X25519 public keys are 32 bytes")
}

/// The content key both sides agree on: `HKDF(X25519(secret, peer), E ‖ R, "coffer content v1")`.
fn agree(
    mine: &agreement::PrivateKey,
    peer: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<Cipher, Error> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    agreement::agree(
        mine,
        agreement::UnparsedPublicKey::new(&agreement::X25519, peer),
        Error::integrity("an X25519 key in the repository is invalid"),
        |shared| {
            // An all-zero shared secret means a low-order point: refuse it.
            if shared.iter().all(|b| *b == 0) {
                return Err(Error::integrity(
                    "an X25519 key in the repository is invalid",
                ));
            }
            Ok(Cipher(hkdf32(shared, &salt, b"coffer content v1")))
        },
    )
}

/// The repository's recipient key pair (write-only repositories): the public half from
/// the config, the secret half only with the full key.
#[derive(Clone)]
struct Recipient {
    public: [u8; 32],
    secret: Option<[u8; 32]>,
}

/// How new content (data and tree blobs, WAL segments, the sealed part of snapshots) is
/// sealed: under the encryption key (a full key), or under a key agreed with the recipient
/// from a fresh ephemeral X25519 pair (a writer), whose public half is stored beside it.
#[derive(Clone)]
pub struct Sealer {
    cipher: Cipher,
    ephemeral: Option<[u8; 32]>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        self.cipher.seal(plaintext)
    }
    pub fn seal_encoded(&self, enc: compress::Encoded) -> Vec<u8> {
        self.cipher.seal_encoded(enc)
    }
    /// The ephemeral public key a reader needs (`None`: the encryption key).
    pub fn ephemeral(&self) -> Option<[u8; 32]> {
        self.ephemeral
    }
}

/// The keys a repository handle holds: a full key (a passphrase slot) or a writer's.
pub struct Keys {
    id: [u8; 32],
    meta: Cipher,
    master: Option<MasterKey>,
    recipient: Option<Recipient>,
    /// Content keys agreed with ephemeral keys, by ephemeral key (full key only).
    agreed: Mutex<HashMap<[u8; 32], Cipher>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.master.is_some() {
            "Keys(full)"
        } else {
            "Keys(write-only)"
        })
    }
}

/// The error of a read that needs the full key, made with a write-only one.
pub fn write_only_error(what: &str) -> anyhow::Error {
    Error::new(
        ErrorKind::WriteOnly,
        format!(
            "{what} needs the full key, but this is a write-only key: it can back up, push \
             WAL, list snapshots and forget, never read data back. Use a passphrase key slot \
             (`coffer key list` shows the kinds)"
        ),
    )
    .into()
}

impl Keys {
    fn new(
        id: [u8; 32],
        meta: Cipher,
        master: Option<MasterKey>,
        recipient: Option<Recipient>,
    ) -> Keys {
        Keys {
            id,
            meta,
            master,
            recipient,
            agreed: Mutex::default(),
        }
    }

    /// The identifier of a blob with this plaintext (keyed BLAKE3).
    pub fn blob_id(&self, data: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id, data).as_bytes())
    }

    /// Whether blobs get the same ids under both keys.
    pub fn same_blob_ids(&self, other: &Keys) -> bool {
        use subtle::ConstantTimeEq;
        self.id.ct_eq(&other.id).into()
    }

    /// The key that seals metadata (the encryption key, in a repository without write-only
    /// slots).
    pub fn meta(&self) -> &Cipher {
        &self.meta
    }

    /// The key that seals a writer's local tree cache ([`crate::repo::tree_cache`]), derived
    /// from the meta key: the full key opens it too, another repository's keys do not.
    pub fn local_cache(&self) -> Cipher {
        Cipher(hkdf32(&self.meta.0, b"", b"coffer local cache v1"))
    }

    /// Whether this is a writer's key (it cannot read content).
    pub fn is_writer(&self) -> bool {
        self.master.is_none()
    }

    /// Whether the repository is write-only enabled (has a recipient key).
    pub fn write_only_repository(&self) -> bool {
        self.recipient.is_some()
    }

    /// The recipient public key (write-only repositories).
    pub fn recipient(&self) -> Option<[u8; 32]> {
        self.recipient.as_ref().map(|r| r.public)
    }

    /// What a write-only slot wraps, for a handle in a write-only repository (a writer
    /// adding a slot for another passphrase).
    pub fn writer_key(&self) -> WriterKey {
        debug_assert!(self.write_only_repository());
        WriterKey {
            id: self.id,
            meta: self.meta.0,
        }
    }

    /// The master key, for what only the full key may do (`what`: for the error).
    pub fn master(&self, what: &str) -> anyhow::Result<&MasterKey> {
        self.master.as_ref().ok_or_else(|| write_only_error(what))
    }

    /// Open metadata: under the meta key, or (a full key in a repository whose upgrade to
    /// write-only slots was interrupted, or a lock written before it) the encryption key.
    pub fn open_meta(&self, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        match self.meta.open(sealed) {
            Ok(p) => Ok(p),
            Err(e) => match (&self.master, &self.recipient) {
                (Some(m), Some(_)) => m.cipher().open(sealed).map_err(|_| e),
                _ => Err(e),
            },
        }
    }

    /// The key that opens content sealed with `ephemeral` (`None`: the encryption key).
    pub fn reader(&self, ephemeral: Option<&[u8; 32]>, what: &str) -> anyhow::Result<Cipher> {
        let master = self.master(what)?;
        let Some(e) = ephemeral else {
            return Ok(master.cipher());
        };
        let mut agreed = self.agreed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = agreed.get(e) {
            return Ok(c.clone());
        }
        let r = self.recipient.as_ref().ok_or_else(|| {
            Error::integrity("content sealed to a recipient key, in a repository without one")
        })?;
        let secret = r.secret.expect("a full key derives the recipient secret");
        let mine = agreement::PrivateKey::from_private_key(&agreement::X25519, &secret)
            .expect("any 32 bytes are an X25519 secret");
        let c = agree(&mine, e, e, &r.public)?;
        agreed.insert(*e, c.clone());
        Ok(c)
    }

    /// A sealer for new content: the encryption key with a full key; for a writer, a key
    /// agreed with the recipient from a fresh ephemeral pair that is dropped at once, so
    /// not even this writer can open what it seals once the sealer is gone.
    pub fn sealer(&self) -> anyhow::Result<Sealer> {
        if let Some(m) = &self.master {
            return Ok(Sealer {
                cipher: m.cipher(),
                ephemeral: None,
            });
        }
        let r = self
            .recipient
            .as_ref()
            .expect("a writer's keys always carry the recipient");
        // From the operating system's generator, as every other key here: aws-lc's own
        // generator seeds itself from CPU jitter first, a tenth of a small backup's time.
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let e = agreement::PrivateKey::from_private_key(&agreement::X25519, &secret)
            .map_err(|_| anyhow::anyhow!("cannot make an X25519 key"))?;
        let public: [u8; 32] = e
            .compute_public_key()
            .map_err(|_| anyhow::anyhow!("cannot compute an X25519 public key"))?
            .as_ref()
            .try_into()
            .expect("X25519 public keys are 32 bytes");
        let cipher = agree(&e, &r.public, &public, &r.public)?;
        Ok(Sealer {
            cipher,
            ephemeral: Some(public),
        })
    }
}

/// A key derived from a passphrase, used only to wrap the master key.
pub struct WrappingKey(Cipher);

impl WrappingKey {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        WrappingKey(Cipher(b))
    }
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        self.0.seal(plaintext)
    }
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        self.0.open(sealed)
    }
}

/// Compression of blob and metadata plaintext: the payload, then one flag byte.
pub mod compress {
    use super::{NONCE_LEN, TAG_LEN};
    use crate::error::Error;

    const RAW: u8 = 0;
    const ZSTD: u8 = 1;
    /// Chunks at least this large are first tried on a sample, so incompressible data
    /// costs almost no compression time.
    const SAMPLE_THRESHOLD: usize = 128 * 1024;
    const SAMPLE: usize = 32 * 1024;

    /// A reusable compressor (one per worker thread).
    pub struct Compressor {
        inner: Option<zstd::bulk::Compressor<'static>>,
        sampler: zstd::bulk::Compressor<'static>,
    }

    impl Compressor {
        /// `level` 0 disables compression.
        pub fn new(level: i32) -> Self {
            Compressor {
                inner: (level != 0).then(|| {
                    zstd::bulk::Compressor::new(level).expect("zstd accepts levels 1..=22")
                }),
                sampler: zstd::bulk::Compressor::new(1).expect("zstd level 1"),
            }
        }

        /// Encode `data` as `payload || flag`, choosing raw storage when compression does
        /// not pay. The result has room for the nonce in front and the tag behind, so
        /// [`MasterKey::seal_encoded`] encrypts it without another copy.
        pub fn encode(&mut self, data: &[u8]) -> Encoded {
            match self.compress(data) {
                Some(enc) => enc,
                None => Framed::copy_from(data).into_raw(),
            }
        }

        /// Like [`encode`](Self::encode), but data stored raw keeps its buffer (no copy).
        pub fn encode_framed(&mut self, data: Framed) -> Encoded {
            match self.compress(data.data()) {
                Some(enc) => enc,
                None => data.into_raw(),
            }
        }

        /// The compressed encoding, or `None` when the data should be stored raw.
        fn compress(&mut self, data: &[u8]) -> Option<Encoded> {
            if let Some(c) = self.inner.as_mut() {
                let worth_trying = data.len() < SAMPLE_THRESHOLD
                    || {
                        let sample = &data[..SAMPLE];
                        matches!(self.sampler.compress(sample), Ok(z) if z.len() < sample.len() * 97 / 100)
                    };
                if worth_trying {
                    let bound = zstd::zstd_safe::compress_bound(data.len());
                    let mut buf = Vec::with_capacity(NONCE_LEN + bound + 1 + TAG_LEN);
                    buf.extend_from_slice(&[0u8; NONCE_LEN]);
                    let mut cur = std::io::Cursor::new(buf);
                    cur.set_position(NONCE_LEN as u64);
                    if let Ok(n) = c.compress_to_buffer(data, &mut cur) {
                        let mut buf = cur.into_inner();
                        debug_assert_eq!(buf.len(), NONCE_LEN + n);
                        if n < data.len() {
                            buf.push(ZSTD);
                            // Packs hold many of these: do not keep the worst-case capacity.
                            if buf.capacity() > buf.len() + buf.len() / 4 + 4096 {
                                buf.reserve_exact(TAG_LEN);
                                buf.shrink_to(buf.len() + TAG_LEN);
                            }
                            return Some(Encoded(buf));
                        }
                    }
                }
            }
            None
        }
    }

    /// Plaintext in a buffer with room for the nonce in front and the flag and tag behind,
    /// so that data stored raw is sealed where it lies.
    pub struct Framed(Vec<u8>);

    impl Framed {
        pub fn copy_from(data: &[u8]) -> Framed {
            let mut buf = Vec::with_capacity(NONCE_LEN + data.len() + 1 + TAG_LEN);
            buf.extend_from_slice(&[0u8; NONCE_LEN]);
            buf.extend_from_slice(data);
            Framed(buf)
        }
        pub fn data(&self) -> &[u8] {
            &self.0[NONCE_LEN..]
        }
        /// The raw encoding: the data where it lies, then the flag.
        fn into_raw(mut self) -> Encoded {
            self.0.push(RAW);
            Encoded(self.0)
        }
        pub fn len(&self) -> usize {
            self.0.len() - NONCE_LEN
        }
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }
    }

    /// Encoded plaintext with room reserved for a nonce in front.
    pub struct Encoded(pub(crate) Vec<u8>);

    impl Encoded {
        /// The encoded bytes (`payload || flag`).
        pub fn payload(&self) -> &[u8] {
            &self.0[NONCE_LEN..]
        }
    }

    /// A reusable decompression context and output buffer (one per restore worker), so
    /// decoding a chunk allocates nothing once the buffer has grown to the largest chunk.
    #[derive(Default)]
    pub struct Decoder {
        ctx: Option<zstd::bulk::Decompressor<'static>>,
        out: Vec<u8>,
    }

    impl Decoder {
        /// Decode `payload || flag`; stored (uncompressed) data is returned without a copy.
        pub fn decode<'a>(&'a mut self, data: &'a [u8]) -> Result<&'a [u8], Error> {
            match data.split_last() {
                Some((&RAW, rest)) => Ok(rest),
                Some((&ZSTD, rest)) => {
                    let size = content_size(rest)?;
                    let ctx = match &mut self.ctx {
                        Some(c) => c,
                        None => self
                            .ctx
                            .insert(zstd::bulk::Decompressor::new().map_err(|e| {
                                Error::integrity(format!("cannot set up decompression: {e}"))
                            })?),
                    };
                    self.out.clear();
                    self.out.reserve(size);
                    ctx.decompress_to_buffer(rest, &mut self.out)
                        .map_err(|e| Error::integrity(format!("decompression failed: {e}")))?;
                    Ok(&self.out)
                }
                _ => Err(Error::integrity("unknown compression flag")),
            }
        }
    }

    /// The best ratio a zstd frame can reach: an RLE block is 4 bytes for up to 128 KiB.
    /// A frame that claims more than this many times its own length is damaged or forged,
    /// and is refused before anything is allocated for it.
    const MAX_RATIO: u64 = 32 * 1024;

    fn content_size(frame: &[u8]) -> Result<usize, Error> {
        let size = zstd::zstd_safe::get_frame_content_size(frame)
            .ok()
            .flatten()
            .ok_or_else(|| Error::integrity("compressed data has no size"))?;
        if size > 1 << 32 || size > (frame.len() as u64).saturating_mul(MAX_RATIO) {
            return Err(Error::integrity("compressed object claims an absurd size"));
        }
        Ok(size as usize)
    }

    /// Decode `payload || flag`.
    pub fn decode(data: &[u8]) -> Result<Vec<u8>, Error> {
        match data.split_last() {
            Some((&RAW, rest)) => Ok(rest.to_vec()),
            Some((&ZSTD, rest)) => {
                let size = content_size(rest)?;
                zstd::bulk::decompress(rest, size)
                    .map_err(|e| Error::integrity(format!("decompression failed: {e}")))
            }
            _ => Err(Error::integrity("unknown compression flag")),
        }
    }
}

pub(crate) mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let v = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("wrong key length"))
    }
}

/// Base64 for an optional 32-byte key in JSON (absent when `None`).
pub(crate) mod b64opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(k) => super::b64::serialize(k, s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        #[derive(Deserialize)]
        struct K(#[serde(with = "super::b64")] [u8; 32]);
        Ok(Option::<K>::deserialize(d)?.map(|k| k.0))
    }
}

/// Base64 for variable-length byte strings in JSON.
pub(crate) mod b64vec {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let k = MasterKey::generate().cipher();
        let s = k.seal(b"hello world");
        assert_eq!(k.open(&s).unwrap(), b"hello world");
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert!(k.open(&t).is_err(), "flip at {i} not detected");
        }
        assert!(MasterKey::generate().cipher().open(&s).is_err());
    }

    #[test]
    fn open_in_place_matches_the_portable_cipher() {
        let k = MasterKey::generate().cipher();
        for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 1000, 4096, 100_000] {
            let mut plain = vec![0u8; len];
            rand::thread_rng().fill_bytes(&mut plain);
            // AWS-LC seals, the portable cipher opens, and the other way round.
            let sealed = k.seal(&plain);
            assert_eq!(sealed.len(), len + OVERHEAD);
            assert_eq!(k.open(&sealed).unwrap(), plain);
            let mut buf = k.seal_portable(&plain);
            assert_eq!(k.open_in_place(&mut buf).unwrap(), &plain[..]);
            let mut buf = sealed.clone();
            assert_eq!(k.open_in_place(&mut buf).unwrap(), &plain[..]);
            for i in [0, NONCE_LEN, sealed.len() / 2, sealed.len() - 1] {
                let mut t = sealed.clone();
                t[i] ^= 0x80;
                assert!(
                    k.open_in_place(&mut t).is_err(),
                    "flip at {i} of {len} not detected"
                );
            }
            let mut short = sealed[..sealed.len() - 1].to_vec();
            assert!(k.open_in_place(&mut short).is_err());
        }
        assert!(k.open_in_place(&mut [0u8; OVERHEAD - 1]).is_err());
    }

    #[test]
    fn blob_ids_are_keyed() {
        let a = MasterKey::generate().keys();
        let b = MasterKey::generate().keys();
        assert_eq!(a.blob_id(b"x"), a.blob_id(b"x"));
        assert_ne!(a.blob_id(b"x"), b.blob_id(b"x"));
    }

    #[test]
    fn compression_round_trip() {
        let mut c = compress::Compressor::new(3);
        let text = b"abcabcabc".repeat(100_000);
        let enc = c.encode(&text);
        assert!(enc.payload().len() < text.len() / 10);
        assert_eq!(compress::decode(enc.payload()).unwrap(), text);
        let k = MasterKey::generate().cipher();
        let sealed = k.seal_encoded(c.encode(&text));
        assert_eq!(compress::decode(&k.open(&sealed).unwrap()).unwrap(), text);
        let mut noise = vec![0u8; 300_000];
        rand::thread_rng().fill_bytes(&mut noise);
        let enc = c.encode(&noise);
        assert_eq!(enc.payload().len(), noise.len() + 1);
        assert_eq!(compress::decode(enc.payload()).unwrap(), noise);
        // Chunks framed for sealing in place encode to the same bytes.
        for data in [&noise[..], &text[..], &noise[..100], b""] {
            let framed = compress::Framed::copy_from(data);
            assert_eq!(framed.data(), data);
            assert_eq!(
                c.encode_framed(framed).payload(),
                c.encode(data).payload(),
                "{} bytes",
                data.len()
            );
        }
        let mut off = compress::Compressor::new(0);
        assert_eq!(compress::decode(off.encode(&text).payload()).unwrap(), text);
    }

    #[test]
    fn a_writer_seals_what_only_the_full_key_opens() {
        let master = MasterKey::generate();
        let repo = Id::random();
        let full = master.write_only_keys(&repo);
        let writer = master.writer(&repo).keys(full.recipient().unwrap());
        // Both hold the same meta and blob-id keys; the meta key is not the encryption key.
        let m = writer.meta().seal(b"index");
        assert_eq!(full.open_meta(&m).unwrap(), b"index");
        assert!(master.cipher().open(&m).is_err());
        assert!(full.same_blob_ids(&writer));
        assert_eq!(full.blob_id(b"x"), writer.blob_id(b"x"));

        let sealer = writer.sealer().unwrap();
        let e = sealer.ephemeral().expect("a writer seals to the recipient");
        let sealed = sealer.seal(b"secret content");
        let opened = full
            .reader(Some(&e), "restore")
            .unwrap()
            .open(&sealed)
            .unwrap();
        assert_eq!(opened, b"secret content");
        // Each sealer has its own ephemeral key, so its own content key.
        let other = writer.sealer().unwrap();
        assert_ne!(other.ephemeral(), Some(e));
        assert!(full
            .reader(other.ephemeral().as_ref(), "restore")
            .unwrap()
            .open(&sealed)
            .is_err());
        // The writer can open none of it, and says why.
        let err = writer.reader(Some(&e), "restore").unwrap_err();
        assert_eq!(crate::error::kind_of(&err), ErrorKind::WriteOnly);
        assert!(
            err.to_string().starts_with("restore needs the full key"),
            "{err}"
        );
        assert!(writer.master("key add").is_err());
        // A full key seals content under the encryption key.
        assert!(full.sealer().unwrap().ephemeral().is_none());
        // The recipient key of another repository opens nothing.
        let elsewhere = master.write_only_keys(&Id::random());
        assert!(elsewhere
            .reader(Some(&e), "restore")
            .unwrap()
            .open(&sealed)
            .is_err());
    }
}
