//! Content-defined chunking (FastCDC 2020 with a secret gear seed).

use super::crypto::compress::Framed;
use crate::repo::ChunkerParams;
use std::io::Read;

/// Bytes read ahead; at least twice the largest chunk, so the window is moved rarely.
const WINDOW: usize = 16 << 20;

/// Split a reader into content-defined chunks. Yields owned chunk buffers, each with room
/// for the nonce and tag around it, so a chunk stored raw is sealed without another copy.
///
/// Reads into one large window and cuts chunks from it, so each byte is copied once (into
/// its chunk) instead of the window being shifted after every chunk.
pub struct Chunker<R: Read> {
    reader: R,
    params: ChunkerParams,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    pub fn new(p: &ChunkerParams, reader: R) -> Self {
        Self::with_buffer(p, reader, Vec::new())
    }

    /// Reuse the window of an earlier chunker (see [`Chunker::into_buffer`]): allocating
    /// and zeroing a fresh 16 MiB window per small file would cost more than chunking it.
    pub fn with_buffer(p: &ChunkerParams, reader: R, buf: Vec<u8>) -> Self {
        Chunker {
            reader,
            params: *p,
            buf,
            start: 0,
            end: 0,
            eof: false,
        }
    }

    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let size = WINDOW.max(2 * self.params.max_size as usize);
        if self.buf.len() < size {
            self.buf.resize(size, 0);
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while !self.eof && self.end < self.buf.len() {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Framed>;
    fn next(&mut self) -> Option<Self::Item> {
        if !self.eof && self.end - self.start < self.params.max_size as usize {
            if let Err(e) = self.fill() {
                return Some(Err(e));
            }
        }
        if self.start == self.end {
            return None;
        }
        let p = &self.params;
        let window = &self.buf[self.start..self.end];
        let len = fastcdc::v2020::FastCDC::with_level_and_seed(
            window,
            p.min_size,
            p.avg_size,
            p.max_size,
            fastcdc::v2020::Normalization::Level1,
            p.seed,
        )
        .next()
        .map(|c| c.length)
        .unwrap_or(window.len());
        let chunk = Framed::copy_from(&window[..len]);
        self.start += len;
        Some(Ok(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    #[test]
    fn chunks_reassemble_and_resync_after_insert() {
        let p = ChunkerParams {
            min_size: 64 << 10,
            avg_size: 256 << 10,
            max_size: 1 << 20,
            seed: 42,
        };
        let mut data = vec![0u8; 40 << 20];
        rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut data);
        let a: Vec<Vec<u8>> = Chunker::new(&p, &data[..])
            .map(|c| c.unwrap().data().to_vec())
            .collect();
        assert_eq!(a.concat(), data);
        assert!(a.len() > 10);
        let mut shifted = b"inserted bytes".to_vec();
        shifted.extend_from_slice(&data);
        let b: Vec<Vec<u8>> = Chunker::new(&p, &shifted[..])
            .map(|c| c.unwrap().data().to_vec())
            .collect();
        // Same cut points as fastcdc's own streaming chunker (the format depends on them).
        let reference: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::with_level_and_seed(
            &data[..],
            p.min_size,
            p.avg_size,
            p.max_size,
            fastcdc::v2020::Normalization::Level1,
            p.seed,
        )
        .map(|c| c.unwrap().data)
        .collect();
        assert_eq!(a, reference);
        let common = a.iter().filter(|c| b.contains(c)).count();
        assert!(
            common >= a.len() - 2,
            "only {common} of {} chunks survived an insert",
            a.len()
        );
    }
}
