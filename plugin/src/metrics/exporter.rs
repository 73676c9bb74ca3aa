//! An optional Prometheus endpoint: one thread, one listener, `GET /metrics`.
//!
//! Workflow:
//! 1. [`Exporter::start`] binds `TIERKV_METRICS_ADDR`. A bind failure (port in use)
//!    is a logged warning and no exporter: the engine never fails because of it.
//! 2. The thread blocks in `accept` (no polling: an idle engine pays nothing),
//!    answers each connection with the text from the render callback, and closes it.
//! 3. Dropping the exporter sets the stop flag, wakes `accept` with a connection of
//!    its own, and joins the thread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running exporter; stops on drop.
pub struct Exporter {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Binds `addr` and serves `render()` on it. `None` (with a warning) when the
    /// address cannot be bound.
    pub fn start(
        addr: SocketAddr,
        dispatch: tracing::Dispatch,
        render: impl Fn() -> String + Send + 'static,
    ) -> Option<Self> {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "metrics exporter not started (TIERKV_METRICS_ADDR)");
                return None;
            }
        };
        let bound = listener.local_addr().ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tierkv-metrics".into())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || serve(&listener, &stop2, &render));
            })
            .ok()?;
        tracing::info!(addr = %bound, "metrics exporter listening");
        Some(Self {
            stop,
            addr: bound,
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept; if the connection fails, the listener is gone
        // and the thread is already leaving.
        let wake = if self.addr.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), self.addr.port())
        } else {
            self.addr
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool, render: &dyn Fn() -> String) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::Acquire) {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, render) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn answer(mut stream: TcpStream, render: &dyn Fn() -> String) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2048];
    let mut req = Vec::new();
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&req);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if line.starts_with("GET ") && (path == "/metrics" || path == "/") {
        ("200 OK", render())
    } else {
        ("404 Not Found", "not found; try /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}
