//! A streaming reader of Redis and Valkey RDB files.
//!
//! It reads any [`Read`] once, front to back, holding one key's value at a time: the
//! header (`REDIS` + four digits or `VALKEY` + three), aux fields, database selectors and
//! resize hints, expiry/LRU/LFU opcodes, function libraries, module aux data and cluster
//! slot info, up to the EOF opcode and the CRC-64 that follows it, which is checked against
//! every byte before it (a zero CRC means the server did not write one).
//!
//! It does not decode values: for each key it finds where the value ends and hands out its
//! bytes exactly as they are in the file ([`Entry::value`]), which is what `DUMP` returns
//! and `RESTORE` takes, once the version and CRC footer are added
//! ([`Entry::restore_payload`]). Keys are decoded (LZF, integer encodings).
//!
//! Anything that is not a whole, well-formed RDB -- a short file, a bad CRC, bytes after
//! the CRC, an opcode or type it does not know -- is an integrity error that says what is
//! wrong and at which offset.

use crate::error::{Error, ErrorKind};
use anyhow::Result;
use crc_fast::{CrcAlgorithm, Digest};
use std::io::Read;

// Opcodes (redis src/rdb.h).
const OP_SLOT_INFO: u8 = 244;
const OP_FUNCTION2: u8 = 245;
const OP_FUNCTION_PRE_GA: u8 = 246;
const OP_MODULE_AUX: u8 = 247;
const OP_IDLE: u8 = 248;
const OP_FREQ: u8 = 249;
const OP_AUX: u8 = 250;
const OP_RESIZEDB: u8 = 251;
const OP_EXPIRETIME_MS: u8 = 252;
const OP_EXPIRETIME: u8 = 253;
const OP_SELECTDB: u8 = 254;
const OP_EOF: u8 = 255;

// String encodings after a length byte of 0b11xxxxxx.
const ENC_INT8: u8 = 0;
const ENC_INT16: u8 = 1;
const ENC_INT32: u8 = 2;
const ENC_LZF: u8 = 3;

// Module value opcodes.
const MOD_EOF: u64 = 0;
const MOD_SINT: u64 = 1;
const MOD_UINT: u64 = 2;
const MOD_FLOAT: u64 = 3;
const MOD_DOUBLE: u64 = 4;
const MOD_STRING: u64 = 5;

/// The first RDB version Valkey writes (`VALKEY080`); below it, type 22 is Redis 7.4's.
pub const VALKEY_FIRST_VERSION: u32 = 80;

/// The CRC-64 that RDB files and DUMP payloads carry (Jones polynomial, reflected).
pub fn crc64(data: &[u8]) -> u64 {
    crc_fast::checksum(CrcAlgorithm::Crc64Redis, data)
}

/// Who wrote the file, by its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Magic {
    Redis,
    Valkey,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    pub magic: Magic,
    pub version: u32,
}

impl Header {
    /// The 9-byte header of an RDB (`REDIS0011`, `VALKEY080`), or why it is not one.
    pub fn parse(magic: &[u8]) -> std::result::Result<Header, String> {
        let (m, digits_at) = if magic.len() == 9 && magic.starts_with(b"REDIS") {
            (Magic::Redis, 5)
        } else if magic.len() == 9 && magic.starts_with(b"VALKEY") {
            (Magic::Valkey, 6)
        } else {
            return Err(format!(
                "this is not an RDB file: it starts with {} instead of REDIS or VALKEY and a version",
                key_display(magic)
            ));
        };
        if !magic[digits_at..].iter().all(u8::is_ascii_digit) {
            return Err(format!(
                "this is not an RDB file: its header {} has no version number",
                key_display(magic)
            ));
        }
        let version = digits(&magic[digits_at..]);
        if version == 0 {
            return Err("the RDB file has version 0".into());
        }
        Ok(Header { magic: m, version })
    }
}

/// One key of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub db: u32,
    pub key: Vec<u8>,
    /// Absolute expiry, Unix time in milliseconds.
    pub expire_ms: Option<i64>,
    /// The RDB object type byte.
    pub type_byte: u8,
    /// The value's RDB encoding exactly as in the file (compressed strings stay compressed).
    pub value: Vec<u8>,
    /// For module values (types 6 and 7): the module type name from the module id.
    pub module: Option<String>,
}

impl Entry {
    /// The `DUMP`/`RESTORE` payload of this value: the type byte, the value bytes, the RDB
    /// version (2 bytes, little-endian) and the CRC-64 of all that (8 bytes, little-endian),
    /// as redis `cluster.c:createDumpPayload` builds it.
    pub fn restore_payload(&self, rdb_version: u32) -> Vec<u8> {
        let mut p = Vec::with_capacity(self.value.len() + 11);
        p.push(self.type_byte);
        p.extend_from_slice(&self.value);
        finish_payload(p, rdb_version)
    }

    /// A short printable form of the key, for messages.
    pub fn key_display(&self) -> String {
        key_display(&self.key)
    }
}

/// Append the version and CRC footer of a DUMP payload.
pub fn finish_payload(mut p: Vec<u8>, rdb_version: u32) -> Vec<u8> {
    p.extend_from_slice(&(rdb_version as u16).to_le_bytes());
    let crc = crc64(&p);
    p.extend_from_slice(&crc.to_le_bytes());
    p
}

/// A key for messages: printable ASCII as it is, other bytes escaped, cut at 80 bytes.
pub fn key_display(key: &[u8]) -> String {
    let mut s = String::new();
    for &b in key.iter().take(80) {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    if key.len() > 80 {
        s.push('…');
    }
    format!("\"{s}\"")
}

/// A function library (`FUNCTION2` opcode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The library name from the code's `#!engine name=...` line, when there is one.
    pub name: Option<String>,
    /// The opcode and the library's string encoding, as in the file: what `FUNCTION DUMP`
    /// payloads are made of.
    pub raw: Vec<u8>,
}

/// What [`RdbReader::next_item`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Key(Entry),
    Function(Function),
}

/// Everything after the last item, once the reader reached the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Trailer {
    /// The CRC-64 the file carries; `None` when the server wrote none (zero or RDB < 5).
    pub checksum: Option<u64>,
    /// Bytes read, the whole file.
    pub size: u64,
}

/// Reads an RDB stream item by item (see the module documentation).
pub struct RdbReader<R: Read> {
    src: Src<R>,
    header: Header,
    aux: Vec<(String, String)>,
    module_aux: Vec<String>,
    db: u32,
    trailer: Option<Trailer>,
}

impl<R: Read> RdbReader<R> {
    /// Read the header.
    pub fn new(r: R) -> Result<Self> {
        let mut src = Src::new(r);
        let mut magic = [0u8; 9];
        src.read_exact(&mut magic, "the header")?;
        let header = Header::parse(&magic).map_err(Error::integrity)?;
        Ok(RdbReader {
            src,
            header,
            aux: Vec::new(),
            module_aux: Vec::new(),
            db: 0,
            trailer: None,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The aux fields read so far (`redis-ver`, `ctime`, ...).
    pub fn aux(&self) -> &[(String, String)] {
        &self.aux
    }

    /// One aux field's value.
    pub fn aux_field(&self, name: &str) -> Option<&str> {
        self.aux
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The module type names of the module aux records read so far (module data that is
    /// not a key, which `RESTORE` cannot carry).
    pub fn module_aux(&self) -> &[String] {
        &self.module_aux
    }

    /// The end of the file, once [`next_item`](Self::next_item) returned `None`.
    pub fn trailer(&self) -> Option<&Trailer> {
        self.trailer.as_ref()
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.src.consumed()
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.src.inner
    }

    /// The next key or function library; `None` at the end, after the checksum was checked
    /// and nothing follows it.
    pub fn next_item(&mut self) -> Result<Option<Item>> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let mut expire_ms = None;
        let mut scratch = Vec::new();
        loop {
            let at = self.src.consumed();
            let op = self.src.u8("an opcode")?;
            scratch.clear();
            match op {
                OP_EOF => {
                    self.finish()?;
                    return Ok(None);
                }
                OP_AUX => {
                    let k = self.src.string("an aux field name")?;
                    let v = self.src.string("an aux field value")?;
                    self.aux.push((
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    ));
                }
                OP_SELECTDB => {
                    let db = self.src.plain_len(&mut scratch, "a database number")?;
                    self.db = u32::try_from(db).map_err(|_| {
                        self.src
                            .damaged(at, &format!("database number {db} is out of range"))
                    })?;
                }
                OP_RESIZEDB => {
                    self.src.plain_len(&mut scratch, "a resize hint")?;
                    self.src.plain_len(&mut scratch, "a resize hint")?;
                }
                OP_EXPIRETIME_MS => {
                    let mut b = [0u8; 8];
                    self.src.read_exact(&mut b, "an expiry time")?;
                    expire_ms = Some(i64::from_le_bytes(b));
                }
                OP_EXPIRETIME => {
                    let mut b = [0u8; 4];
                    self.src.read_exact(&mut b, "an expiry time")?;
                    expire_ms = Some(i64::from(i32::from_le_bytes(b)) * 1000);
                }
                OP_IDLE => {
                    self.src.plain_len(&mut scratch, "an LRU idle time")?;
                }
                OP_FREQ => {
                    self.src.u8("an LFU frequency")?;
                }
                OP_SLOT_INFO => {
                    for _ in 0..3 {
                        self.src.plain_len(&mut scratch, "cluster slot info")?;
                    }
                }
                OP_MODULE_AUX => {
                    let id = self.src.plain_len(&mut scratch, "a module id")?;
                    let when_op = self.src.plain_len(&mut scratch, "module aux data")?;
                    if when_op != MOD_UINT {
                        return Err(self.src.damaged(
                            at,
                            &format!("module aux data has a bad 'when' opcode {when_op}"),
                        ));
                    }
                    self.src.plain_len(&mut scratch, "module aux data")?;
                    self.src.module_body(&mut scratch)?;
                    self.module_aux.push(module_name(id));
                }
                OP_FUNCTION_PRE_GA => {
                    return Err(self.src.unsupported(
                        at,
                        "a function library in the pre-release format of Redis 7.0 rc1/rc2, \
                         which no released Redis loads",
                    ))
                }
                OP_FUNCTION2 => {
                    let mut raw = vec![OP_FUNCTION2];
                    let start = raw.len();
                    self.src.string_raw(&mut raw, "a function library")?;
                    let code =
                        decode_string(&raw[start..]).map_err(|e| self.src.damaged(at, &e))?;
                    return Ok(Some(Item::Function(Function {
                        name: library_name(&code),
                        raw,
                    })));
                }
                t if is_object_type(t) => {
                    let key = self.src.string("a key")?;
                    let mut value = Vec::new();
                    let module = self.value(t, &mut value).map_err(|e| {
                        e.context(format!("in the value of key {}", key_display(&key)))
                    })?;
                    return Ok(Some(Item::Key(Entry {
                        db: self.db,
                        key,
                        expire_ms,
                        type_byte: t,
                        value,
                        module,
                    })));
                }
                t => {
                    return Err(self.src.unsupported(
                        at,
                        &format!(
                            "opcode or value type {t}, which this coffer does not know (a newer \
                             server wrote it, or the file is damaged)"
                        ),
                    ))
                }
            }
        }
    }

    /// After the EOF opcode: the checksum, then nothing.
    fn finish(&mut self) -> Result<()> {
        let computed = self.src.crc_so_far();
        let mut checksum = None;
        if self.header.version >= 5 || self.header.magic == Magic::Valkey {
            let at = self.src.consumed();
            let mut b = [0u8; 8];
            self.src
                .read_exact(&mut b, "the checksum after the EOF opcode")?;
            let stored = u64::from_le_bytes(b);
            if stored != 0 {
                if stored != computed {
                    return Err(Error::integrity(format!(
                        "the RDB checksum does not match (at offset {at}: the file says {stored:016x}, \
                         its contents give {computed:016x}): the file is damaged"
                    ))
                    .into());
                }
                checksum = Some(stored);
            }
        }
        let end = self.src.consumed();
        if self.src.at_end()? {
            self.trailer = Some(Trailer {
                checksum,
                size: end,
            });
            Ok(())
        } else {
            Err(Error::integrity(format!(
                "the RDB file goes on after its end: there are bytes after the checksum at offset {end}"
            ))
            .into())
        }
    }

    /// Read the value of type `t` into `out`; the module name for module values.
    fn value(&mut self, t: u8, out: &mut Vec<u8>) -> Result<Option<String>> {
        let s = &mut self.src;
        match t {
            0 | 9..=13 | 16 | 17 | 20 | 23 => s.string_raw(out, "a value")?,
            1 | 2 | 14 => {
                let n = s.plain_len(out, "an element count")?;
                for _ in 0..n {
                    s.string_raw(out, "an element")?;
                }
            }
            3 => {
                let n = s.plain_len(out, "a sorted set size")?;
                for _ in 0..n {
                    s.string_raw(out, "a sorted set member")?;
                    let l = s.copy_u8(out, "a score")?;
                    if l < 253 {
                        s.copy(l as u64, out, "a score")?;
                    }
                }
            }
            4 => {
                let n = s.plain_len(out, "a hash size")?;
                for _ in 0..n {
                    s.string_raw(out, "a hash field")?;
                    s.string_raw(out, "a hash value")?;
                }
            }
            5 => {
                let n = s.plain_len(out, "a sorted set size")?;
                for _ in 0..n {
                    s.string_raw(out, "a sorted set member")?;
                    s.copy(8, out, "a score")?;
                }
            }
            6 => {
                let at = s.consumed();
                return Err(s.unsupported(
                    at,
                    "a module value in the pre-release format of Redis 4.0 rc (type 6)",
                ));
            }
            7 => {
                let id = s.plain_len(out, "a module id")?;
                s.module_body(out)?;
                return Ok(Some(module_name(id)));
            }
            18 => {
                let n = s.plain_len(out, "a quicklist node count")?;
                for _ in 0..n {
                    let at = s.consumed();
                    let c = s.plain_len(out, "a quicklist container")?;
                    if c != 1 && c != 2 {
                        return Err(s.damaged(at, &format!("bad quicklist container {c}")));
                    }
                    s.string_raw(out, "a quicklist node")?;
                }
            }
            15 | 19 | 21 => s.stream(t, out)?,
            22 if self.header.version >= VALKEY_FIRST_VERSION => {
                // Valkey 9 RDB_TYPE_HASH_2: field, value, absolute expiry (ms, -1 = none).
                let n = s.plain_len(out, "a hash size")?;
                for _ in 0..n {
                    s.string_raw(out, "a hash field")?;
                    s.string_raw(out, "a hash value")?;
                    s.copy(8, out, "a field expiry")?;
                }
            }
            22 | 24 => {
                // Redis 7.4 hash with field expiry: [min expiry], then ttl, field, value.
                if t == 24 {
                    s.copy(8, out, "a hash's minimum field expiry")?;
                }
                let n = s.plain_len(out, "a hash size")?;
                for _ in 0..n {
                    s.plain_len(out, "a field expiry")?;
                    s.string_raw(out, "a hash field")?;
                    s.string_raw(out, "a hash value")?;
                }
            }
            25 => {
                s.copy(8, out, "a hash's minimum field expiry")?;
                s.string_raw(out, "a listpack")?;
            }
            _ => {
                let at = s.consumed();
                return Err(s.unsupported(at, &format!("value type {t}")));
            }
        }
        Ok(None)
    }
}

fn digits(d: &[u8]) -> u32 {
    d.iter().fold(0u32, |n, b| n * 10 + u32::from(b - b'0'))
}

/// Object types an RDB may hold (rdbIsObjectType, plus what we name as unsupported).
fn is_object_type(t: u8) -> bool {
    t <= 7 || (9..=25).contains(&t)
}

/// The module type name encoded in the upper 54 bits of a module id (9 characters of 6
/// bits each), as redis `module.c:moduleTypeNameByID`.
pub fn module_name(id: u64) -> String {
    const CHARSET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = id >> 10;
    let mut name = [0u8; 9];
    for j in 0..9 {
        name[8 - j] = CHARSET[(id & 63) as usize];
        id >>= 6;
    }
    String::from_utf8_lossy(&name).into_owned()
}

/// The library name in a function library's first line: `#!lua name=mylib`.
fn library_name(code: &[u8]) -> Option<String> {
    let line = code.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("#!")?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("name="))
        .map(str::to_string)
}

/// Decode one string in its RDB encoding (as `string_raw` copied it).
fn decode_string(raw: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut src = Src::new(raw);
    src.string("a string").map_err(|e| format!("{e:#}"))
}

/// LZF decompression (liblzf's format, as Redis writes it): exactly `len` bytes out.
pub fn lzf_decompress(input: &[u8], len: usize) -> std::result::Result<Vec<u8>, String> {
    // Each input byte yields at most ~132 output bytes; start small, grow as it arrives.
    let mut out: Vec<u8> = Vec::with_capacity(len.min(input.len().saturating_mul(4)));
    let mut i = 0;
    while i < input.len() {
        let ctrl = input[i] as usize;
        i += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            if i + run > input.len() {
                return Err("LZF literal run past the end of the data".into());
            }
            if out.len() + run > len {
                return Err("LZF data decompresses to more than its stated length".into());
            }
            out.extend_from_slice(&input[i..i + run]);
            i += run;
        } else {
            let mut run = ctrl >> 5;
            if run == 7 {
                let b = *input.get(i).ok_or("LZF back reference past the end")?;
                run += b as usize;
                i += 1;
            }
            let b = *input.get(i).ok_or("LZF back reference past the end")? as usize;
            i += 1;
            let back = ((ctrl & 0x1f) << 8) + b + 1;
            run += 2;
            if back > out.len() {
                return Err("LZF back reference before the start of the data".into());
            }
            if out.len() + run > len {
                return Err("LZF data decompresses to more than its stated length".into());
            }
            let from = out.len() - back;
            for k in 0..run {
                let c = out[from + k];
                out.push(c);
            }
        }
    }
    if out.len() != len {
        return Err(format!(
            "LZF data decompresses to {} bytes, not the {len} stated",
            out.len()
        ));
    }
    Ok(out)
}

/// A length, or the special string encoding that takes its place.
enum Len {
    Len(u64),
    Enc(u8),
}

const BUF: usize = 256 << 10;

/// The byte source: buffered, counting, and computing the CRC-64 of what was consumed.
struct Src<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// Bytes consumed before `buf[0]`.
    base: u64,
    /// `buf[..crc_from]` is in `crc` already.
    crc_from: usize,
    crc: Digest,
}

impl<R: Read> Src<R> {
    fn new(inner: R) -> Self {
        Src {
            inner,
            buf: vec![0; BUF],
            pos: 0,
            len: 0,
            base: 0,
            crc_from: 0,
            crc: Digest::new(CrcAlgorithm::Crc64Redis),
        }
    }

    fn consumed(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// The CRC of everything consumed so far.
    fn crc_so_far(&mut self) -> u64 {
        self.crc.update(&self.buf[self.crc_from..self.pos]);
        self.crc_from = self.pos;
        self.crc.finalize()
    }

    /// Refill the buffer; false at the end of the input.
    fn fill(&mut self) -> Result<bool> {
        debug_assert_eq!(self.pos, self.len);
        self.crc.update(&self.buf[self.crc_from..self.len]);
        self.base += self.len as u64;
        self.pos = 0;
        self.len = 0;
        self.crc_from = 0;
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(n) => {
                    self.len = n;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e, self.base)),
            }
        }
    }

    /// True when no byte follows.
    fn at_end(&mut self) -> Result<bool> {
        if self.pos < self.len {
            return Ok(false);
        }
        Ok(!self.fill()?)
    }

    fn truncated(&self, what: &str) -> anyhow::Error {
        Error::integrity(format!(
            "the RDB file ends early, at offset {}, in {what}: it is truncated",
            self.consumed()
        ))
        .into()
    }

    fn damaged(&self, at: u64, what: &str) -> anyhow::Error {
        Error::integrity(format!("the RDB file is damaged at offset {at}: {what}")).into()
    }

    fn unsupported(&self, at: u64, what: &str) -> anyhow::Error {
        Error::integrity(format!(
            "the RDB file holds {what} at offset {at}, which this coffer cannot restore \
             (unsupported)"
        ))
        .into()
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        if self.pos == self.len && !self.fill()? {
            return Err(self.truncated(what));
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }

    fn copy_u8(&mut self, out: &mut Vec<u8>, what: &str) -> Result<u8> {
        let b = self.u8(what)?;
        out.push(b);
        Ok(b)
    }

    fn read_exact(&mut self, dst: &mut [u8], what: &str) -> Result<()> {
        let mut done = 0;
        while done < dst.len() {
            if self.pos == self.len && !self.fill()? {
                return Err(self.truncated(what));
            }
            let n = (self.len - self.pos).min(dst.len() - done);
            dst[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
        }
        Ok(())
    }

    /// Append `n` bytes to `out` (grown as the bytes arrive, so that a damaged length
    /// cannot make it allocate more than the file holds).
    fn copy(&mut self, mut n: u64, out: &mut Vec<u8>, what: &str) -> Result<()> {
        while n > 0 {
            if self.pos == self.len && !self.fill()? {
                return Err(self.truncated(what));
            }
            let k = ((self.len - self.pos) as u64).min(n) as usize;
            out.extend_from_slice(&self.buf[self.pos..self.pos + k]);
            self.pos += k;
            n -= k as u64;
        }
        Ok(())
    }

    fn len_raw(&mut self, out: &mut Vec<u8>, what: &str) -> Result<Len> {
        let at = self.consumed();
        let b = self.copy_u8(out, what)?;
        Ok(match b >> 6 {
            0 => Len::Len(u64::from(b & 0x3f)),
            1 => {
                let b2 = self.copy_u8(out, what)?;
                Len::Len((u64::from(b & 0x3f) << 8) | u64::from(b2))
            }
            2 => match b {
                0x80 => {
                    let mut x = [0u8; 4];
                    self.read_exact(&mut x, what)?;
                    out.extend_from_slice(&x);
                    Len::Len(u64::from(u32::from_be_bytes(x)))
                }
                0x81 => {
                    let mut x = [0u8; 8];
                    self.read_exact(&mut x, what)?;
                    out.extend_from_slice(&x);
                    Len::Len(u64::from_be_bytes(x))
                }
                _ => return Err(self.damaged(at, &format!("bad length byte {b:#04x} in {what}"))),
            },
            _ => Len::Enc(b & 0x3f),
        })
    }

    fn plain_len(&mut self, out: &mut Vec<u8>, what: &str) -> Result<u64> {
        let at = self.consumed();
        match self.len_raw(out, what)? {
            Len::Len(n) => Ok(n),
            Len::Enc(e) => Err(self.damaged(
                at,
                &format!("a string encoding ({e}) where {what} (a length) belongs"),
            )),
        }
    }

    /// Copy one string in its RDB encoding to `out`.
    fn string_raw(&mut self, out: &mut Vec<u8>, what: &str) -> Result<()> {
        let at = self.consumed();
        match self.len_raw(out, what)? {
            Len::Len(n) => self.copy(n, out, what),
            Len::Enc(ENC_INT8) => self.copy(1, out, what),
            Len::Enc(ENC_INT16) => self.copy(2, out, what),
            Len::Enc(ENC_INT32) => self.copy(4, out, what),
            Len::Enc(ENC_LZF) => {
                let clen = self.plain_len(out, what)?;
                self.plain_len(out, what)?;
                self.copy(clen, out, what)
            }
            Len::Enc(e) => Err(self.damaged(at, &format!("unknown string encoding {e} in {what}"))),
        }
    }

    /// One string, decoded.
    fn string(&mut self, what: &str) -> Result<Vec<u8>> {
        let at = self.consumed();
        let mut hdr = Vec::new();
        match self.len_raw(&mut hdr, what)? {
            Len::Len(n) => {
                let mut s = Vec::new();
                self.copy(n, &mut s, what)?;
                Ok(s)
            }
            Len::Enc(ENC_INT8) => {
                let b = self.u8(what)?;
                Ok((b as i8).to_string().into_bytes())
            }
            Len::Enc(ENC_INT16) => {
                let mut x = [0u8; 2];
                self.read_exact(&mut x, what)?;
                Ok(i16::from_le_bytes(x).to_string().into_bytes())
            }
            Len::Enc(ENC_INT32) => {
                let mut x = [0u8; 4];
                self.read_exact(&mut x, what)?;
                Ok(i32::from_le_bytes(x).to_string().into_bytes())
            }
            Len::Enc(ENC_LZF) => {
                let clen = self.plain_len(&mut hdr, what)?;
                let ulen = self.plain_len(&mut hdr, what)?;
                let mut c = Vec::new();
                self.copy(clen, &mut c, what)?;
                let ulen = usize::try_from(ulen)
                    .map_err(|_| self.damaged(at, &format!("{what}: length out of range")))?;
                lzf_decompress(&c, ulen).map_err(|e| self.damaged(at, &format!("{what}: {e}")))
            }
            Len::Enc(e) => Err(self.damaged(at, &format!("unknown string encoding {e} in {what}"))),
        }
    }

    /// A module value's opcodes up to and including its EOF opcode.
    fn module_body(&mut self, out: &mut Vec<u8>) -> Result<()> {
        loop {
            let at = self.consumed();
            match self.plain_len(out, "module data")? {
                MOD_EOF => return Ok(()),
                MOD_SINT | MOD_UINT => {
                    self.plain_len(out, "module data")?;
                }
                MOD_FLOAT => self.copy(4, out, "module data")?,
                MOD_DOUBLE => self.copy(8, out, "module data")?,
                MOD_STRING => self.string_raw(out, "module data")?,
                op => return Err(self.damaged(at, &format!("unknown module data opcode {op}"))),
            }
        }
    }

    /// A stream (types 15, 19, 21): listpacks, metadata, consumer groups.
    fn stream(&mut self, t: u8, out: &mut Vec<u8>) -> Result<()> {
        let n = self.plain_len(out, "a stream listpack count")?;
        for _ in 0..n {
            self.string_raw(out, "a stream node key")?;
            self.string_raw(out, "a stream listpack")?;
        }
        // length, last id (ms, seq); from v2 first id, max deleted id, entries added.
        let fields = if t >= 19 { 8 } else { 3 };
        for _ in 0..fields {
            self.plain_len(out, "stream metadata")?;
        }
        let groups = self.plain_len(out, "a consumer group count")?;
        for _ in 0..groups {
            self.string_raw(out, "a consumer group name")?;
            self.plain_len(out, "a consumer group id")?;
            self.plain_len(out, "a consumer group id")?;
            if t >= 19 {
                self.plain_len(out, "a consumer group offset")?;
            }
            let pel = self.plain_len(out, "a pending entries count")?;
            for _ in 0..pel {
                // Raw id (16 bytes), delivery time (8), delivery count.
                self.copy(24, out, "a pending entry")?;
                self.plain_len(out, "a delivery count")?;
            }
            let consumers = self.plain_len(out, "a consumer count")?;
            for _ in 0..consumers {
                self.string_raw(out, "a consumer name")?;
                // Seen time; from v3 also active time.
                self.copy(if t >= 21 { 16 } else { 8 }, out, "a consumer's times")?;
                let pel = self.plain_len(out, "a consumer's pending count")?;
                self.copy(pel.saturating_mul(16), out, "a consumer's pending entries")?;
            }
        }
        Ok(())
    }
}

/// A read error of the underlying source, keeping the kind of a coffer error inside it
/// (a repository blob that failed verification stays an integrity error).
fn read_error(e: std::io::Error, offset: u64) -> anyhow::Error {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        return anyhow::Error::new(inner.clone())
            .context(format!("reading the RDB file at offset {offset}"));
    }
    anyhow::Error::new(Error::new(
        ErrorKind::Other,
        format!("reading the RDB file at offset {offset} failed: {e}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RDB with the given body (after the header), an EOF opcode and a real checksum.
    fn rdb(version: u32, body: &[u8]) -> Vec<u8> {
        let mut f = format!("REDIS{version:04}").into_bytes();
        f.extend_from_slice(body);
        f.push(OP_EOF);
        let crc = crc64(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    fn items(data: &[u8]) -> Result<Vec<Item>> {
        let mut r = RdbReader::new(data)?;
        let mut v = Vec::new();
        while let Some(i) = r.next_item()? {
            v.push(i);
        }
        Ok(v)
    }

    fn keys(data: &[u8]) -> Vec<Entry> {
        items(data)
            .unwrap()
            .into_iter()
            .filter_map(|i| match i {
                Item::Key(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn err(data: &[u8]) -> String {
        let e = items(data).unwrap_err();
        assert_eq!(crate::error::kind_of(&e), ErrorKind::Integrity, "{e:#}");
        format!("{e:#}")
    }

    #[test]
    fn crc64_is_redis_crc64() {
        // redis src/crc64.c test vector.
        assert_eq!(crc64(b"123456789"), 0xe9c6d914c4b8d9ca);
    }

    #[test]
    fn lzf_round() {
        // "aaaaaaaaaa": literal 'a', then a back reference of length 9 at distance 1.
        let c = [0x00, b'a', 0xe0, 0x00, 0x00];
        assert_eq!(lzf_decompress(&c, 10).unwrap(), b"aaaaaaaaaa");
        assert!(lzf_decompress(&c, 9).is_err());
        assert!(lzf_decompress(&[0x05, b'a'], 6).is_err());
        assert!(lzf_decompress(&[0x20, 0x05], 3).is_err());
    }

    #[test]
    fn module_names() {
        // "ReJSON-RL" with encoding version 3, built the way redis builds module ids.
        const CHARSET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut id = 0u64;
        for c in b"ReJSON-RL" {
            id = (id << 6) | CHARSET.iter().position(|x| x == c).unwrap() as u64;
        }
        id = (id << 10) | 3;
        assert_eq!(module_name(id), "ReJSON-RL");
    }

    #[test]
    fn strings_keys_expiry_and_payload() {
        let mut body = vec![OP_AUX, 9];
        body.extend_from_slice(b"redis-ver");
        body.extend_from_slice(&[5]);
        body.extend_from_slice(b"7.0.0");
        body.extend_from_slice(&[OP_SELECTDB, 3, OP_RESIZEDB, 2, 1]);
        body.extend_from_slice(&[OP_EXPIRETIME_MS]);
        body.extend_from_slice(&1_700_000_000_123i64.to_le_bytes());
        // key "k" = "v"
        body.extend_from_slice(&[0, 1, b'k', 1, b'v']);
        // key 12345 (int16 encoded) = LZF "aaaaaaaaaa"
        body.extend_from_slice(&[
            0, 0xc1, 0x39, 0x30, 0xc3, 5, 10, 0x00, b'a', 0xe0, 0x00, 0x00,
        ]);
        let f = rdb(10, &body);
        let mut r = RdbReader::new(&f[..]).unwrap();
        assert_eq!(r.header().version, 10);
        let Some(Item::Key(a)) = r.next_item().unwrap() else {
            panic!()
        };
        assert_eq!(r.aux_field("redis-ver"), Some("7.0.0"));
        assert_eq!(
            (a.db, &a.key[..], a.expire_ms),
            (3, &b"k"[..], Some(1_700_000_000_123))
        );
        assert_eq!(a.value, [1, b'v']);
        let p = a.restore_payload(10);
        assert_eq!(&p[..3], &[0, 1, b'v']);
        assert_eq!(&p[3..5], &[10, 0]);
        assert_eq!(
            u64::from_le_bytes(p[5..].try_into().unwrap()),
            crc64(&p[..5])
        );
        let Some(Item::Key(b)) = r.next_item().unwrap() else {
            panic!()
        };
        assert_eq!((&b.key[..], b.expire_ms), (&b"12345"[..], None));
        assert_eq!(b.value, [0xc3, 5, 10, 0x00, b'a', 0xe0, 0x00, 0x00]);
        assert!(r.next_item().unwrap().is_none());
        assert_eq!(r.trailer().unwrap().size, f.len() as u64);
        assert!(r.trailer().unwrap().checksum.is_some());
    }

    #[test]
    fn collections_and_streams_end_where_they_should() {
        let mut body = Vec::new();
        // list of 2 (type 1), zset v1 with "inf" and "1.5", zset2, hash, quicklist2.
        body.extend_from_slice(&[1, 1, b'l', 2, 1, b'a', 1, b'b']);
        body.extend_from_slice(&[3, 1, b'z', 2, 1, b'a', 254, 1, b'b', 3, b'1', b'.', b'5']);
        body.extend_from_slice(&[5, 2, b'z', b'2', 1, 1, b'm']);
        body.extend_from_slice(&1.5f64.to_le_bytes());
        body.extend_from_slice(&[4, 1, b'h', 1, 1, b'f', 1, b'v']);
        body.extend_from_slice(&[18, 1, b'q', 2, 1, 3, b'x', b'y', b'z', 2, 1, b'p']);
        // stream v3: one listpack, metadata, one group with one pending entry, one consumer.
        let mut s = vec![21, 1, b's', 1, 16];
        s.extend_from_slice(&[0u8; 16]);
        s.extend_from_slice(&[3, b'l', b'p', b'!']);
        s.extend_from_slice(&[1, 5, 0, 0, 0, 0, 0, 1]); // length, last, first, max deleted, added
        s.extend_from_slice(&[1, 1, b'g', 5, 0, 1]); // 1 group "g", id 5-0, offset 1
        s.extend_from_slice(&[1]);
        s.extend_from_slice(&[7u8; 16]);
        s.extend_from_slice(&[9u8; 8]);
        s.push(1); // delivery count
        s.extend_from_slice(&[1, 1, b'c']);
        s.extend_from_slice(&[8u8; 16]); // seen + active
        s.push(1);
        s.extend_from_slice(&[7u8; 16]);
        body.extend_from_slice(&s);
        // A module value: id, SINT 5, STRING "ab", DOUBLE, EOF.
        body.extend_from_slice(&[7, 1, b'm', 0x81]);
        body.extend_from_slice(&(0x1234_5678_9abc_de01u64).to_be_bytes());
        body.extend_from_slice(&[1, 5, 5, 2, b'a', b'b', 4]);
        body.extend_from_slice(&[0u8; 8]);
        body.push(0);
        // A function library.
        let code = b"#!lua name=mylib\nredis.register_function('f', function() return 1 end)";
        body.extend_from_slice(&[OP_FUNCTION2, 0x40, code.len() as u8]);
        body.extend_from_slice(code);
        let f = rdb(11, &body);
        let all = items(&f).unwrap();
        assert_eq!(all.len(), 8);
        let ks: Vec<Entry> = keys(&f);
        let names: Vec<&[u8]> = ks.iter().map(|e| &e.key[..]).collect();
        assert_eq!(names, [&b"l"[..], b"z", b"z2", b"h", b"q", b"s", b"m"]);
        assert_eq!(ks[5].value, s[3..]);
        assert!(ks[6].module.is_some());
        let Item::Function(func) = &all[7] else {
            panic!()
        };
        assert_eq!(func.name.as_deref(), Some("mylib"));
        assert_eq!(func.raw[0], OP_FUNCTION2);
        assert_eq!(func.raw.len(), 3 + code.len());
    }

    #[test]
    fn hash_field_expiry_types() {
        let mut body = vec![24, 1, b'h'];
        body.extend_from_slice(&1000i64.to_le_bytes());
        body.extend_from_slice(&[2, 0, 1, b'a', 1, b'1', 5, 1, b'b', 1, b'2']);
        body.extend_from_slice(&[25, 1, b'x']);
        body.extend_from_slice(&1000i64.to_le_bytes());
        body.extend_from_slice(&[2, b'l', b'p']);
        let ks = keys(&rdb(12, &body));
        assert_eq!(ks.len(), 2);
        assert_eq!(ks[0].value.len(), 8 + 11);
        // Valkey 9's type 22: field, value, 8-byte expiry.
        let mut f = b"VALKEY080".to_vec();
        f.extend_from_slice(&[22, 1, b'h', 1, 1, b'a', 1, b'1']);
        f.extend_from_slice(&(-1i64).to_le_bytes());
        f.push(OP_EOF);
        f.extend_from_slice(&crc64(&f).to_le_bytes());
        let ks = keys(&f);
        assert_eq!(ks[0].value.len(), 13);
    }

    #[test]
    fn every_flipped_byte_and_cut_is_an_error_or_a_value_never_a_panic() {
        let mut body = vec![OP_SELECTDB, 1, 0, 1, b'k', 3, b'v', b'a', b'l'];
        body.extend_from_slice(&[18, 1, b'q', 1, 2, 0xc3, 5, 10, 0x00, b'a', 0xe0, 0x00, 0x00]);
        body.extend_from_slice(&[
            21, 1, b's', 0, 1, 5, 0, 0, 0, 0, 0, 1, 1, 1, b'g', 5, 0, 1, 0, 0,
        ]);
        body.extend_from_slice(&[0, 0xc3, 5, 10, 0x00, b'a', 0xe0, 0x00, 0x00, 1, b'v']);
        let good = rdb(11, &body);
        assert_eq!(keys(&good).len(), 4);
        for cut in 0..good.len() {
            assert!(items(&good[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..good.len() {
            for x in [0x01u8, 0x40, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= x;
                // Without the checksum, too, so that the structure itself is exercised.
                let n = bad.len();
                let mut unchecked = bad.clone();
                unchecked[n - 8..].fill(0);
                assert!(items(&bad).is_err(), "flip {x:#x} at {i}");
                let _ = items(&unchecked);
            }
        }
    }

    #[test]
    fn damage_is_refused_with_its_offset() {
        let good = rdb(10, &[0, 1, b'k', 3, b'v', b'a', b'l']);
        assert_eq!(keys(&good).len(), 1);
        for cut in [3, 9, 12, good.len() - 9, good.len() - 1] {
            let e = err(&good[..cut]);
            assert!(
                e.contains("ends early") || e.contains("not an RDB"),
                "{cut}: {e}"
            );
        }
        let mut bad = good.clone();
        bad[13] ^= 1;
        assert!(err(&bad).contains("checksum does not match"));
        let mut long = good.clone();
        long.push(0);
        assert!(err(&long).contains("after the checksum"));
        assert!(err(&rdb(10, &[8, 1, b'k'])).contains("value type 8"));
        assert!(err(&rdb(10, &[200])).contains("opcode or value type 200"));
        assert!(err(b"GARBAGE!!").contains("not an RDB file"));
        assert!(err(&rdb(10, &[0, 1, b'k', 0xc9])).contains("unknown string encoding"));
        // A zero checksum means none was written.
        let mut zero = good[..good.len() - 8].to_vec();
        zero.extend_from_slice(&[0; 8]);
        let mut r = RdbReader::new(&zero[..]).unwrap();
        while r.next_item().unwrap().is_some() {}
        assert_eq!(r.trailer().unwrap().checksum, None);
    }
}
