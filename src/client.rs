//! A small HTTP/1.1 client over the plugin's unix socket, for `rustvlan state` and tests.

use std::path::Path;

use anyhow::Context;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// POSTs `body` to `path` (like `/Plugin.Activate`) and returns the status and body.
/// Connection errors come back as `std::io::Error` in the chain, so callers can tell
/// "nobody is listening" from a failed call.
pub async fn post(socket: &Path, path: &str, body: impl Into<Bytes>) -> anyhow::Result<(u16, Bytes)> {
    let stream = UnixStream::connect(socket).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    let driver = tokio::spawn(connection);
    let request = Request::post(path)
        .header(hyper::header::HOST, "rustvlan")
        .body(Full::new(body.into()))
        .context("building the request")?;
    let response = sender.send_request(request).await.context("sending the request")?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}
