//! The `publish` rows' load generator: one keep-alive HTTP/1.1 connection
//! per client, the same pre-built request bytes written each time, the
//! answer parsed by `httparse` (status and `content-length` only).
//!
//! The bench shares the machine's two cores with the gateway and the
//! broker, and the plain publisher it is compared with has no HTTP client
//! at all, so whatever the client spends is taken from the gateway's side
//! of the ratio. reqwest (building a request, a header map and a pool
//! checkout per call, the body serialized each time) took ~22% of a core
//! at 8.5k req/s; this takes what wrk would.

use anyhow::Context;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One client connection.
pub struct LeanClient {
    stream: TcpStream,
    request: std::sync::Arc<Vec<u8>>,
    buffer: Vec<u8>,
}

/// `POST path` with a JSON `body` and a bearer `key`, as raw bytes.
pub fn post_request(host: &SocketAddr, path: &str, key: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

impl LeanClient {
    pub async fn connect(
        address: SocketAddr,
        request: std::sync::Arc<Vec<u8>>,
    ) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            request,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Sends the request once and reads the whole answer: its status.
    pub async fn send(&mut self) -> anyhow::Result<u16> {
        self.stream.write_all(&self.request).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) =
                response.parse(&self.buffer).context("a malformed answer")?
            {
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0usize);
                let status = response.code.unwrap_or(0);
                if self.buffer.len() >= head + length {
                    self.buffer.drain(..head + length);
                    return Ok(status);
                }
            }
            let read = self.stream.read_buf(&mut self.buffer).await?;
            if read == 0 {
                anyhow::bail!("the gateway closed the connection");
            }
        }
    }
}
