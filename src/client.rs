//! A small HTTP/1.1 client over the plugin's unix socket, for `rustvlan state`, tests
//! and benchmarks.

use std::path::{Path, PathBuf};

use anyhow::Context;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// One keep-alive connection, as dockerd keeps one per plugin; it reconnects after the
/// plugin went away. Connection errors come back as `std::io::Error` in the chain, so
/// callers can tell "nobody is listening" from a failed call.
pub struct Client {
    socket: PathBuf,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
            sender: None,
        }
    }

    /// POSTs `body` to `path` (like `/Plugin.Activate`) and returns the status and body.
    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> anyhow::Result<(u16, Bytes)> {
        let result = self.try_post(path, body.into()).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    /// GETs `path` (like `/metrics`).
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let result = self.send(hyper::Method::GET, path, Bytes::new()).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_post(&mut self, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        self.send(hyper::Method::POST, path, body).await
    }

    async fn send(&mut self, method: hyper::Method, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = UnixStream::connect(&self.socket).await?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP handshake")?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await.context("connection to the plugin")?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "rustvlan")
            .body(Full::new(body))
            .context("building the request")?;
        let response = sender.send_request(request).await.context("sending the request")?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        Ok((status, body))
    }
}

/// One GET on a connection of its own.
pub async fn get(socket: &Path, path: &str) -> anyhow::Result<(u16, Bytes)> {
    Client::new(socket).get(path).await
}

/// One call on a connection of its own.
pub async fn post(socket: &Path, path: &str, body: impl Into<Bytes>) -> anyhow::Result<(u16, Bytes)> {
    Client::new(socket).post(path, body).await
}
