//! Content-defined chunking (FastCDC 2020 with a secret gear seed).

use crate::repo::ChunkerParams;
use std::io::Read;

/// Split a reader into content-defined chunks. Yields owned chunk buffers.
pub struct Chunker<R: Read> {
    inner: fastcdc::v2020::StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    pub fn new(p: &ChunkerParams, reader: R) -> Self {
        Chunker {
            inner: fastcdc::v2020::StreamCDC::with_level_and_seed(
                reader,
                p.min_size,
                p.avg_size,
                p.max_size,
                fastcdc::v2020::Normalization::Level1,
                p.seed,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Vec<u8>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| {
            r.map(|c| c.data).map_err(|e| match e {
                fastcdc::v2020::Error::IoError(e) => e,
                other => std::io::Error::other(other.to_string()),
            })
        })
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
        let mut data = vec![0u8; 8 << 20];
        rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut data);
        let a: Vec<Vec<u8>> = Chunker::new(&p, &data[..]).map(|c| c.unwrap()).collect();
        assert_eq!(a.concat(), data);
        assert!(a.len() > 10);
        let mut shifted = b"inserted bytes".to_vec();
        shifted.extend_from_slice(&data);
        let b: Vec<Vec<u8>> = Chunker::new(&p, &shifted[..]).map(|c| c.unwrap()).collect();
        let common = a.iter().filter(|c| b.contains(c)).count();
        assert!(
            common >= a.len() - 2,
            "only {common} of {} chunks survived an insert",
            a.len()
        );
    }
}
