//! Taking an RDB from a running server, as a stream: over the replication protocol (as a
//! replica and `redis-cli --rdb` do) or, where SYNC is refused, with `BGSAVE` and the
//! server's own file.
//!
//! Whatever the way, the bytes pass through [`RdbCheck`] on their way into the
//! repository: the stream must start with an RDB header and end with the end-of-file
//! opcode and, when the server wrote one, the CRC64 of everything before it. A stream
//! that does not is a failed source (exit 8), and no snapshot is written.

use super::conn::{Conn, Reply};
use crate::error::{Error, ErrorKind};
use anyhow::Result;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The CRC-64 of RDB files (see [`super::rdb::crc64`]), computed as the bytes pass.
fn crc64() -> crc_fast::Digest {
    crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Redis)
}

/// What a whole RDB stream showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdbSummary {
    /// The format version of the header (`REDIS0011` → 11, `VALKEY080` → 80).
    pub version: u32,
    /// Whether the server wrote a checksum (it writes zero with `rdbchecksum no`).
    pub checksum: bool,
    pub size: u64,
}

/// The checks on a stream that must be one whole RDB file, fed as it passes.
pub struct RdbCheck {
    crc: crc_fast::Digest,
    head: Vec<u8>,
    /// The last 8 bytes seen, not yet in the CRC (they may be the CRC itself).
    tail: Vec<u8>,
    /// The byte before `tail`: the end-of-file opcode in a whole file.
    before_tail: Option<u8>,
    size: u64,
}

impl Default for RdbCheck {
    fn default() -> Self {
        RdbCheck {
            crc: crc64(),
            head: Vec::with_capacity(9),
            tail: Vec::with_capacity(16),
            before_tail: None,
            size: 0,
        }
    }
}

impl RdbCheck {
    pub fn update(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        if self.head.len() < 9 {
            let n = (9 - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
        }
        if data.len() >= 8 {
            // Everything held back, and all of `data` but its last 8 bytes, is before the
            // final 8 bytes of the stream.
            if let Some(&b) = data[..data.len() - 8].last().or(self.tail.last()) {
                self.before_tail = Some(b);
            }
            self.crc.update(&self.tail);
            self.tail.clear();
            self.crc.update(&data[..data.len() - 8]);
            self.tail.extend_from_slice(&data[data.len() - 8..]);
            return;
        }
        self.tail.extend_from_slice(data);
        if self.tail.len() > 8 {
            let extra = self.tail.len() - 8;
            self.before_tail = Some(self.tail[extra - 1]);
            self.crc.update(&self.tail[..extra]);
            self.tail.drain(..extra);
        }
    }

    /// The verdict once the stream ended.
    pub fn finish(&self) -> std::result::Result<RdbSummary, String> {
        if self.size == 0 {
            return Err("the stream is empty".into());
        }
        if self.head.len() < 9 {
            return Err(format!("the stream ended after {} bytes", self.size));
        }
        let version = super::rdb::Header::parse(&self.head)?.version;
        if version < 5 {
            // No checksum before version 5: the file ends with the EOF opcode.
            return match self.tail.last() {
                Some(0xFF) => Ok(RdbSummary {
                    version,
                    checksum: false,
                    size: self.size,
                }),
                _ => Err("it does not end with the end-of-file opcode".into()),
            };
        }
        if self.size < 18 || self.before_tail != Some(0xFF) {
            return Err(format!(
                "it is cut short: after {} bytes there is no end-of-file opcode and checksum",
                self.size
            ));
        }
        let stored = u64::from_le_bytes(self.tail[..8].try_into().expect("8 bytes"));
        if stored == 0 {
            return Ok(RdbSummary {
                version,
                checksum: false,
                size: self.size,
            });
        }
        let computed = self.crc.finalize();
        if computed != stored {
            return Err(format!(
                "its CRC64 does not match (stored {stored:016x}, computed {computed:016x}): the data was damaged or cut"
            ));
        }
        Ok(RdbSummary {
            version,
            checksum: true,
            size: self.size,
        })
    }
}

/// How the payload of a SYNC is delimited.
enum Framing {
    /// `$<len>`: exactly this many bytes remain.
    Len(u64),
    /// `$EOF:<mark>`: the RDB ends where the 40-byte mark follows it.
    Mark([u8; 40]),
}

/// The RDB of a SYNC as a reader: the payload without its framing, checked by
/// [`RdbCheck`]. It returns end-of-stream only after a whole, verified RDB; anything else
/// (a cut connection, a bad checksum, a timeout) is a read error, so the stream's saver
/// fails and no snapshot is written.
pub struct SyncStream<'a> {
    conn: &'a mut Conn,
    framing: Framing,
    /// Received bytes not yet passed on are `buf[start..end]` (in mark framing, the last
    /// 40 are held back). The buffer keeps its length: it is zeroed once, not per read.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    done: bool,
    check: RdbCheck,
    summary: Option<RdbSummary>,
    last_ack: Instant,
}

fn failed(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl SyncStream<'_> {
    /// The summary, once the stream was read to its verified end.
    pub fn summary(&self) -> Option<RdbSummary> {
        self.summary
    }

    /// The total size when the server said it (disk-based sync).
    pub fn announced(&self) -> Option<u64> {
        match self.framing {
            Framing::Len(n) => Some(n),
            Framing::Mark(_) => None,
        }
    }

    /// Tell the server we are alive, as a replica does every second.
    fn keep_alive(&mut self) -> io::Result<()> {
        if self.last_ack.elapsed() >= Duration::from_secs(1) {
            self.last_ack = Instant::now();
            let s = self.conn.raw().get_mut();
            s.write_all(b"*3\r\n$8\r\nREPLCONF\r\n$3\r\nACK\r\n$1\r\n0\r\n")?;
            s.flush()?;
        }
        Ok(())
    }

    fn cut(&self, e: Option<io::Error>) -> io::Error {
        let got = self.check.size + (self.end - self.start) as u64;
        let why = match e {
            Some(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                "the server sent nothing in time (timed out)".to_string()
            }
            Some(e) => format!("reading failed: {e}"),
            None => "the server closed the connection".to_string(),
        };
        let of = match self.framing {
            Framing::Len(n) => format!(" of {n}"),
            Framing::Mark(_) => String::new(),
        };
        failed(format!(
            "the RDB transfer from Redis at {} was cut after {got}{of} bytes: {why}",
            self.conn.target()
        ))
    }

    /// Receive more of the payload into `buf`; false at its end.
    fn fill(&mut self) -> io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        self.keep_alive()?;
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let room = self.buf.len() - self.end;
        let want = match self.framing {
            Framing::Len(n) => ((n - self.check.size) as usize - self.end).min(room),
            Framing::Mark(_) => room,
        };
        if want == 0 {
            self.done = true;
            return Ok(false);
        }
        let n = loop {
            match self
                .conn
                .raw()
                .read(&mut self.buf[self.end..self.end + want])
            {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.cut(Some(e))),
            }
        };
        if n == 0 {
            return Err(self.cut(None));
        }
        self.end += n;
        if let Framing::Mark(mark) = &self.framing {
            if self.buf[..self.end].ends_with(mark) {
                self.end -= mark.len();
                self.done = true;
            }
        }
        Ok(true)
    }

    /// Bytes that may be passed on now.
    fn ready(&self) -> usize {
        let held = match (&self.framing, self.done) {
            (Framing::Mark(m), false) => m.len(),
            _ => 0,
        };
        (self.end - self.start).saturating_sub(held)
    }
}

impl Read for SyncStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let ready = self.ready();
            if ready > 0 {
                let n = ready.min(out.len());
                out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
                self.check.update(&out[..n]);
                self.start += n;
                return Ok(n);
            }
            if self.done {
                return match self.check.finish() {
                    Ok(s) => {
                        self.summary = Some(s);
                        Ok(0)
                    }
                    Err(why) => Err(failed(format!(
                        "the RDB from Redis at {} is not whole: {why}",
                        self.conn.target()
                    ))),
                };
            }
            self.fill()?;
        }
    }
}

/// The advice when SYNC is refused.
const USE_BGSAVE: &str = "if the server refuses replication commands (a managed service, \
    rename-command, an ACL user without +sync), use --redis-method bgsave on the Redis host";

/// Start a full synchronisation: the returned stream is the RDB.
pub fn start_sync(conn: &mut Conn) -> Result<SyncStream<'_>> {
    let refused = |conn: &Conn, what: &str, e: &str| -> anyhow::Error {
        Error::new(
            ErrorKind::Source,
            format!(
                "Redis at {} refused {what}: {e} ({USE_BGSAVE})",
                conn.target()
            ),
        )
        .into()
    };
    if let Reply::Error(e) = conn.command(&[b"REPLCONF", b"capa", b"eof"])? {
        return Err(refused(conn, "REPLCONF", &e));
    }
    // Only an RDB, no replication stream after it. Servers before 7.0 do not know it and
    // answer with an error, which is harmless.
    conn.command(&[b"REPLCONF", b"rdb-only", b"1"])?;
    conn.send(&[b"SYNC"])?;
    conn.flush()?;
    let framing = loop {
        let line = conn.read_line()?;
        if line.is_empty() {
            continue; // a keep-alive newline while the server forks
        }
        match line[0] {
            b'-' => return Err(refused(conn, "SYNC", &String::from_utf8_lossy(&line[1..]))),
            b'+' => continue, // +FULLRESYNC, +CONTINUE: not for SYNC, but harmless
            b'$' => {
                if let Some(mark) = line.strip_prefix(b"$EOF:") {
                    let mark: [u8; 40] = mark.try_into().map_err(|_| {
                        Error::new(
                            ErrorKind::Source,
                            format!(
                                "Redis at {}: a diskless transfer mark of {} bytes, not 40",
                                conn.target(),
                                mark.len()
                            ),
                        )
                    })?;
                    break Framing::Mark(mark);
                }
                let n = std::str::from_utf8(&line[1..])
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Source,
                            format!(
                                "Redis at {}: a bad transfer length {:?}",
                                conn.target(),
                                String::from_utf8_lossy(&line)
                            ),
                        )
                    })?;
                break Framing::Len(n);
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::Source,
                    format!(
                        "Redis at {}: unexpected answer to SYNC: {:?}",
                        conn.target(),
                        String::from_utf8_lossy(&line[..line.len().min(60)])
                    ),
                )
                .into())
            }
        }
    };
    Ok(SyncStream {
        conn,
        framing,
        buf: vec![0; (1 << 20) + 64],
        start: 0,
        end: 0,
        done: false,
        check: RdbCheck::default(),
        summary: None,
        last_ack: Instant::now(),
    })
}

/// A file read through [`RdbCheck`] (the BGSAVE fallback).
pub struct CheckedFile {
    file: std::io::BufReader<std::fs::File>,
    path: PathBuf,
    check: RdbCheck,
    summary: Option<RdbSummary>,
}

impl CheckedFile {
    pub fn summary(&self) -> Option<RdbSummary> {
        self.summary
    }
}

impl Read for CheckedFile {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(out)?;
        if n == 0 {
            return match self.check.finish() {
                Ok(s) => {
                    self.summary = Some(s);
                    Ok(0)
                }
                Err(why) => Err(failed(format!(
                    "the RDB file {} is not whole: {why}",
                    self.path.display()
                ))),
            };
        }
        self.check.update(&out[..n]);
        Ok(n)
    }
}

fn field<'a>(info: &'a std::collections::BTreeMap<String, String>, k: &str) -> &'a str {
    info.get(k).map(String::as_str).unwrap_or("")
}

/// Have the server write its RDB (`BGSAVE`), wait until it finished well, and open the
/// file it wrote, which must be on this host.
pub fn bgsave(conn: &mut Conn, progress: &crate::progress::Progress) -> Result<CheckedFile> {
    let source = |m: String| -> anyhow::Error { Error::new(ErrorKind::Source, m).into() };
    let target = conn.target().to_string();
    let wait_idle = |conn: &mut Conn| -> Result<std::collections::BTreeMap<String, String>> {
        loop {
            let p = conn.info("persistence")?;
            if field(&p, "rdb_bgsave_in_progress") != "1" {
                return Ok(p);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_idle(conn)?;
    let mut tries = 0;
    loop {
        match conn.command(&[b"BGSAVE"])? {
            Reply::Status(_) => break,
            Reply::Error(e) if e.contains("in progress") && tries < 50 => {
                // Another save (or an AOF rewrite) runs: wait for it, then ask again, so
                // that the file holds the data as of now.
                tries += 1;
                wait_idle(conn)?;
                std::thread::sleep(Duration::from_millis(200));
            }
            Reply::Error(e) => {
                return Err(source(format!(
                    "Redis at {target} refused BGSAVE: {e} (give a user that may run BGSAVE, \
                     INFO and CONFIG GET, or use --redis-method sync)"
                )))
            }
            other => {
                return Err(source(format!(
                    "Redis at {target}: BGSAVE answered {other:?}"
                )))
            }
        }
    }
    progress.set_message("waiting for BGSAVE");
    // BGSAVE answered once its fork started, and no other save can start while it runs:
    // the first idle state after the answer is the end of our save.
    let after = wait_idle(conn)?;
    if field(&after, "rdb_last_bgsave_status") != "ok" {
        return Err(source(format!(
            "Redis at {target}: BGSAVE failed (rdb_last_bgsave_status:{}; see the server's log)",
            field(&after, "rdb_last_bgsave_status")
        )));
    }
    let (dir, name) = match (conn.config_get("dir")?, conn.config_get("dbfilename")?) {
        (Some(d), Some(n)) => (d, n),
        _ => {
            return Err(source(format!(
                "Redis at {target} saved its RDB but refuses CONFIG GET dir/dbfilename, so \
                 coffer cannot find the file (allow CONFIG GET, or use --redis-method sync)"
            )))
        }
    };
    let path = PathBuf::from(&dir).join(&name);
    let not_here = || {
        source(format!(
            "Redis at {target} saved its RDB to {} on its own host, which is not readable \
             here: run coffer on the Redis host (as a user that can read the file), or use \
             --redis-method sync",
            path.display()
        ))
    };
    let file = std::fs::File::open(&path).map_err(|_| not_here())?;
    // The file must be the one this save wrote, not a file of another server at the same
    // path: its modification time is the save's time.
    let saved: i64 = field(&after, "rdb_last_save_time").parse().unwrap_or(0);
    let mtime = file
        .metadata()
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    if (mtime - saved).abs() > 5 {
        return Err(not_here());
    }
    Ok(CheckedFile {
        file: std::io::BufReader::with_capacity(1 << 20, file),
        path,
        check: RdbCheck::default(),
        summary: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rdb(version: &str, body: &[u8], crc: bool) -> Vec<u8> {
        let mut v = format!("REDIS{version}").into_bytes();
        v.extend_from_slice(body);
        v.push(0xFF);
        let c = if crc {
            let mut d = crc64();
            d.update(&v);
            d.finalize()
        } else {
            0
        };
        v.extend_from_slice(&c.to_le_bytes());
        v
    }

    fn check_in_pieces(data: &[u8], piece: usize) -> std::result::Result<RdbSummary, String> {
        let mut c = RdbCheck::default();
        for p in data.chunks(piece) {
            c.update(p);
        }
        c.finish()
    }

    #[test]
    fn whole_files_pass_in_any_pieces() {
        let f = rdb("0011", b"\xfa\x09redis-ver\x067.0.15\xfe\x00", true);
        for piece in [1, 3, 7, 8, 9, 17, 1000] {
            let s = check_in_pieces(&f, piece).unwrap();
            assert_eq!(s.version, 11);
            assert!(s.checksum);
            assert_eq!(s.size, f.len() as u64);
        }
        let f = rdb("0010", b"", false);
        assert!(!check_in_pieces(&f, 4).unwrap().checksum);
        let mut v = b"VALKEY080".to_vec();
        v.extend_from_slice(&rdb("0011", b"x", true)[9..]);
        // (the CRC covers the REDIS header, so recompute for the VALKEY one)
        let mut d = crc64();
        d.update(&v[..v.len() - 8]);
        let n = v.len();
        v[n - 8..].copy_from_slice(&d.finalize().to_le_bytes());
        assert_eq!(check_in_pieces(&v, 5).unwrap().version, 80);
    }

    #[test]
    fn damaged_or_cut_files_fail() {
        let f = rdb("0011", b"\xfe\x00\x00\x03key\x05value", true);
        for cut in [0, 5, 9, 12, f.len() - 9, f.len() - 1] {
            assert!(check_in_pieces(&f[..cut], 4).is_err(), "cut at {cut}");
        }
        let mut bad = f.clone();
        bad[14] ^= 1;
        let e = check_in_pieces(&bad, 6).unwrap_err();
        assert!(e.contains("CRC64"), "{e}");
        let e = check_in_pieces(b"*1\r\n$4\r\nPING\r\n....", 6).unwrap_err();
        assert!(e.contains("not an RDB file"), "{e}");
    }
}
