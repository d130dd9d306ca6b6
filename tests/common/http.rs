//! A local HTTP/1.1 receiver for tests of what coffer sends (alerts, webhooks, pings).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// An HTTP/1.1 server on a free local port: records each request and answers with the next
/// scripted status (200 when the script is empty); while held, it answers nothing.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    held: Arc<(Mutex<bool>, Condvar)>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let r = Receiver {
            url: format!("http://{}", listener.local_addr().unwrap()),
            requests: Default::default(),
            script: Default::default(),
            held: Default::default(),
        };
        let me = r.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let me = me.clone();
                std::thread::spawn(move || me.serve(conn));
            }
        });
        r
    }

    fn serve(&self, conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut length = 0;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        self.requests.lock().unwrap().push(Request {
            method,
            path: path.clone(),
            body: String::from_utf8(body).unwrap(),
        });
        {
            let (held, cv) = &*self.held;
            let mut h = held.lock().unwrap();
            while *h {
                h = cv.wait(h).unwrap();
            }
        }
        let status = self.script.lock().unwrap().pop_front().unwrap_or(200);
        // Like many servers, an error page that repeats the path (the webhook's secret).
        let text = if status == 200 {
            "ok".to_string()
        } else {
            format!("no hook at {path}")
        };
        let mut conn = conn;
        let _ = write!(
            conn,
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn answer(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }

    pub fn hold(&self, on: bool) {
        let (held, cv) = &*self.held;
        *held.lock().unwrap() = on;
        cv.notify_all();
    }
}
