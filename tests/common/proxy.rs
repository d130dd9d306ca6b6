//! A TCP proxy for the storage tests: a slow link between coffer and an S3 server.
//!
//! It forwards 127.0.0.1 connections to the server, passing uploads (client to server) at a
//! rate shared by all connections, as one link would, and counts the bytes it passed.
//! Downloads are not slowed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct ThrottledProxy {
    pub port: u16,
    uploaded: Arc<AtomicU64>,
    /// Pump threads still running (two per connection).
    pumps: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// The moment the link is free again: each chunk takes its turn, so that by any time `t` at
/// most `rate × t` bytes (plus one chunk) have gone through, however many connections share it.
struct Link {
    rate: u64,
    free_at: Mutex<Instant>,
}

impl Link {
    fn pass(&self, n: usize) {
        let due = {
            let mut free_at = self.free_at.lock().unwrap();
            let start = (*free_at).max(Instant::now());
            *free_at = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
            *free_at
        };
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

impl ThrottledProxy {
    /// Forward to 127.0.0.1:`target`, uploads at `rate` bytes per second in all. Stops
    /// accepting when dropped.
    pub fn new(target: u16, rate: u64) -> ThrottledProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let uploaded = Arc::new(AtomicU64::new(0));
        let pumps = Arc::new(AtomicUsize::new(0));
        let link = Arc::new(Link {
            rate,
            free_at: Mutex::new(Instant::now()),
        });
        {
            let (stop, uploaded, pumps) = (stop.clone(), uploaded.clone(), pumps.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                        continue;
                    };
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    pumps.fetch_add(2, Ordering::SeqCst);
                    let (link, uploaded, p1, p2) =
                        (link.clone(), uploaded.clone(), pumps.clone(), pumps.clone());
                    std::thread::spawn(move || {
                        pump(client, server, Some((&link, &uploaded)), Shutdown::Write);
                        p1.fetch_sub(1, Ordering::SeqCst);
                    });
                    std::thread::spawn(move || {
                        pump(s2, c2, None, Shutdown::Both);
                        p2.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
        }
        ThrottledProxy {
            port,
            uploaded,
            pumps,
            stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bytes passed from clients to the server so far.
    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::SeqCst)
    }

    /// Wait until every connection is closed in both directions (for example after the
    /// client was killed). The server has then answered or dropped every request it got: an
    /// upload whose last bytes were still in flight when its client died is stored by then,
    /// or never. False on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.pumps.load(Ordering::SeqCst) > 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for ThrottledProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake up accept()
    }
}

/// Copy `from` to `to` until `from` ends, then shut `to` down by `end`. Uploads end with a
/// half-close: the server still reads what was sent and answers it, and its own close (seen
/// by the pump of the other direction) marks the end of the connection. Ending them both ways
/// let the server finish a request after `wait_idle` returned: a pack listed only later.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    throttle: Option<(&Link, &AtomicU64)>,
    end: Shutdown,
) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some((link, uploaded)) = throttle {
                    link.pass(n);
                    uploaded.fetch_add(n as u64, Ordering::SeqCst);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(end);
}
