//! Routes every `POST /<Method>` to the plugin, decodes bodies leniently (dockerd sends
//! no Content-Type, and nothing at all for argument-less calls), and shapes answers and
//! errors the way dockerd reads them.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::Instrument;

use super::wire::{
    ActivateResponse, AllocateNetworkResponse, CONTENT_TYPE, CreateEndpointRequest, CreateNetworkRequest,
    DiscoveryRequest, Empty, EndpointRequest, GwAllocCheckRequest, IpamCapabilities, JoinRequest, NetworkRequest,
    ReleaseAddressRequest, ReleasePoolRequest, RequestAddressRequest, RequestPoolRequest,
};
use super::{driver, ipam};
use crate::error::{Error, ErrorKind};
use crate::kernel::Kernel;
use crate::metrics::Metrics;
use crate::plugin::Plugin;

/// Largest request body accepted. dockerd's biggest, CreateNetwork, is a few KiB.
pub const MAX_BODY: usize = 1024 * 1024;

/// Which API a method belongs to decides the error key: the driver API reads `Err`,
/// the IPAM API reads `Error` on a 200. rustvlan answers errors with a non-200 status,
/// where dockerd's plugin client reads `Err` for both; IPAM errors carry `Error` too,
/// so that any client of docs/ipam.md finds the message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Driver,
    Ipam,
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

fn error_response(api: Api, err: &Error) -> Response {
    let status = match err.kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict | ErrorKind::Exhausted => StatusCode::CONFLICT,
        ErrorKind::Kernel | ErrorKind::Store => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = match api {
        Api::Driver => json!({ "Err": err.message }),
        Api::Ipam => json!({ "Err": err.message, "Error": err.message }),
    };
    json_response(status, &body)
}

/// Ids a request names, for the request's log span, and the arguments it carries, for
/// the error that answers a request without them.
trait Ids {
    const ARGUMENTS: &'static str;
    fn network(&self) -> Option<&str> {
        None
    }
    fn endpoint(&self) -> Option<&str> {
        None
    }
    fn pool(&self) -> Option<&str> {
        None
    }
}

macro_rules! ids {
    ($t:ty, $args:literal, network) => {
        impl Ids for $t {
            const ARGUMENTS: &'static str = $args;
            fn network(&self) -> Option<&str> {
                Some(&self.network_id)
            }
        }
    };
    ($t:ty, $args:literal, network, endpoint) => {
        impl Ids for $t {
            const ARGUMENTS: &'static str = $args;
            fn network(&self) -> Option<&str> {
                Some(&self.network_id)
            }
            fn endpoint(&self) -> Option<&str> {
                Some(&self.endpoint_id)
            }
        }
    };
    ($t:ty, $args:literal, pool) => {
        impl Ids for $t {
            const ARGUMENTS: &'static str = $args;
            fn pool(&self) -> Option<&str> {
                Some(&self.pool_id)
            }
        }
    };
    ($t:ty, $args:literal) => {
        impl Ids for $t {
            const ARGUMENTS: &'static str = $args;
        }
    };
}
ids!(CreateNetworkRequest, "NetworkID, Options, IPv4Data, IPv6Data", network);
ids!(NetworkRequest, "NetworkID", network);
ids!(
    CreateEndpointRequest,
    "NetworkID, EndpointID, Interface, Options",
    network,
    endpoint
);
ids!(EndpointRequest, "NetworkID, EndpointID", network, endpoint);
ids!(JoinRequest, "NetworkID, EndpointID, SandboxKey", network, endpoint);
ids!(RequestAddressRequest, "PoolID, Address, Options", pool);
ids!(ReleaseAddressRequest, "PoolID, Address", pool);
ids!(ReleasePoolRequest, "PoolID", pool);
ids!(RequestPoolRequest, "AddressSpace, Pool, SubPool, Options, V6");
ids!(DiscoveryRequest, "DiscoveryType, DiscoveryData");
ids!(GwAllocCheckRequest, "Options");

fn decode<T: DeserializeOwned + Ids>(method: &str, body: &Bytes) -> Result<T, Error> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        // dockerd 28 retries a call whose connection broke with an empty body.
        None => {
            return Err(Error::invalid(format!(
                "{method} came with an empty body, without its arguments ({}); dockerd sends that when it \
                 retries a call whose connection broke. Nothing was changed: run the docker command again",
                T::ARGUMENTS
            )));
        }
        // serde would take an array for a struct, with a baffling message.
        Some(b'{') => {}
        Some(_) => {
            return Err(Error::invalid(format!(
                "{method} needs a JSON object in the request body"
            )));
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." || path == "?" {
            Error::invalid(format!("invalid {method} request: {inner}"))
        } else {
            Error::invalid(format!("invalid {method} request: field {path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| Error::invalid(format!("invalid {method} request: {e}")))?;
    Ok(value)
}

/// How much of a too-large body is read and dropped before the refusal is sent: a client
/// still writing when the connection closes sees a broken pipe instead of the answer.
const DRAIN_LIMIT: usize = 16 * MAX_BODY;

async fn read_body(body: Body) -> Result<Bytes, Error> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::invalid(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY {
                bytes.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > MAX_BODY {
        return Err(Error::invalid(format!(
            "request body is larger than {} KiB",
            MAX_BODY / 1024
        )));
    }
    Ok(Bytes::from(bytes))
}

/// Decodes, runs and answers one call inside a span that names its ids.
/// Counted and timed in the request metrics by outcome.
async fn call<Req, Resp, Fut>(
    api: Api,
    method: &'static str,
    metrics: &Metrics,
    body: Body,
    handler: impl FnOnce(Req) -> Fut,
) -> Response
where
    Req: DeserializeOwned + Ids,
    Resp: Serialize,
    Fut: Future<Output = Result<Resp, Error>>,
{
    let started = Instant::now();
    let (response, outcome) = answer(api, method, body, handler).await;
    metrics.observe_request(method, outcome, started.elapsed());
    response
}

async fn answer<Req, Resp, Fut>(
    api: Api,
    method: &'static str,
    body: Body,
    handler: impl FnOnce(Req) -> Fut,
) -> (Response, Result<(), ErrorKind>)
where
    Req: DeserializeOwned + Ids,
    Resp: Serialize,
    Fut: Future<Output = Result<Resp, Error>>,
{
    let span = tracing::info_span!(
        "request",
        method,
        network = tracing::field::Empty,
        endpoint = tracing::field::Empty,
        pool = tracing::field::Empty
    );
    async move {
        let bytes = match read_body(body).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("{e}");
                let mut response = error_response(api, &e);
                *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                return (response, Err(e.kind));
            }
        };
        let request: Req = match decode(method, &bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e}");
                return (error_response(api, &e), Err(e.kind));
            }
        };
        let span = tracing::Span::current();
        if let Some(id) = request.network() {
            span.record("network", crate::util::short_id(id));
        }
        if let Some(id) = request.endpoint() {
            span.record("endpoint", crate::util::short_id(id));
        }
        if let Some(id) = request.pool() {
            span.record("pool", id);
        }
        match handler(request).await {
            Ok(answer) => (json_response(StatusCode::OK, &answer), Ok(())),
            Err(e) => {
                tracing::warn!(kind = ?e.kind, "{}", e.chain());
                (error_response(api, &e), Err(e.kind))
            }
        }
    }
    .instrument(span)
    .await
}

/// Argument-less calls: whatever body comes (dockerd sends none) is ignored.
fn constant<T: Serialize + Send + 'static, K: Kernel>(
    method: &'static str,
    f: fn(&Plugin<K>) -> T,
) -> MethodRouter<Arc<Plugin<K>>> {
    rpc(post(move |State(plugin): State<Arc<Plugin<K>>>| async move {
        let started = Instant::now();
        let response = json_response(StatusCode::OK, &f(&plugin));
        plugin.metrics().observe_request(method, Ok(()), started.elapsed());
        response
    }))
}

/// `GET /metrics`: the Prometheus text exposition.
async fn metrics<K: Kernel>(State(plugin): State<Arc<Plugin<K>>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        plugin.metrics_text(),
    )
        .into_response()
}

/// What `--metrics-listen` serves: `GET /metrics` and nothing else, never the plugin API.
pub fn metrics_router<K: Kernel>(plugin: Arc<Plugin<K>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<K>))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") })
        .with_state(plugin)
}

fn rpc<K: Kernel>(route: MethodRouter<Arc<Plugin<K>>>) -> MethodRouter<Arc<Plugin<K>>> {
    route.fallback(|| async {
        json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "Err": "plugin methods are called with POST" }),
        )
    })
}

macro_rules! route {
    ($api:expr, $name:literal, |$plugin:ident, $req:ident: $t:ty| $body:expr) => {
        rpc(post(
            move |State($plugin): State<Arc<Plugin<K>>>, body: Body| async move {
                let counted = Arc::clone(&$plugin);
                call($api, $name, counted.metrics(), body, |$req: $t| async move { $body }).await
            },
        ))
    };
}

/// The IPAM a socket serves: `rustvlan` (local and shared pools) or `rustvlan-dhcp`
/// (leases). The routes are the same; the capabilities and the pools they make differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpamName {
    Rustvlan,
    RustvlanDhcp,
}

/// The IpamDriver calls, once for both sockets.
fn ipam_routes<K: Kernel>(router: Router<Arc<Plugin<K>>>, ipam: IpamName) -> Router<Arc<Plugin<K>>> {
    use Api::Ipam;
    let dhcp = ipam == IpamName::RustvlanDhcp;
    let capabilities: fn(&Plugin<K>) -> IpamCapabilities = match ipam {
        IpamName::Rustvlan => |_| ipam::capabilities(false),
        IpamName::RustvlanDhcp => |_| ipam::capabilities(true),
    };
    router
        .route(
            "/IpamDriver.GetCapabilities",
            constant("IpamDriver.GetCapabilities", capabilities),
        )
        .route(
            "/IpamDriver.GetDefaultAddressSpaces",
            constant("IpamDriver.GetDefaultAddressSpaces", |_| ipam::address_spaces()),
        )
        .route(
            "/IpamDriver.RequestPool",
            route!(Ipam, "IpamDriver.RequestPool", |p, r: RequestPoolRequest| p
                .ipam
                .request_pool(ipam::pool_request(r, dhcp))
                .await
                .map(ipam::pool_answer)),
        )
        .route(
            "/IpamDriver.ReleasePool",
            route!(Ipam, "IpamDriver.ReleasePool", |p, r: ReleasePoolRequest| p
                .ipam
                .release_pool(&r.pool_id)
                .await
                .map(|()| Empty {})),
        )
        .route(
            "/IpamDriver.RequestAddress",
            route!(Ipam, "IpamDriver.RequestAddress", |p, r: RequestAddressRequest| {
                let ask = ipam::address_request(r)?;
                p.ipam.request_address(ask).await.map(ipam::address_answer)
            }),
        )
        .route(
            "/IpamDriver.ReleaseAddress",
            route!(Ipam, "IpamDriver.ReleaseAddress", |p, r: ReleaseAddressRequest| {
                let ip = ipam::released_address(&r)?;
                p.ipam.release_address(&r.pool_id, ip).await.map(|()| Empty {})
            }),
        )
}

/// `rustvlan-dhcp`: the IPAM whose addresses are leases from the LAN's DHCP server, on a
/// socket of its own, because the MAC that a lease needs is asked for per IPAM driver
/// (`RequiresMACAddress`), and asking it of `rustvlan` would force MACs onto ipvlan.
pub fn dhcp_router<K: Kernel>(plugin: Arc<Plugin<K>>) -> Router {
    let router = Router::new().route(
        "/Plugin.Activate",
        constant("Plugin.Activate", |_| ActivateResponse {
            implements: vec!["IpamDriver"],
        }),
    );
    ipam_routes(router, IpamName::RustvlanDhcp)
        .fallback(|uri: axum::http::Uri| async move {
            json_response(
                StatusCode::NOT_FOUND,
                &json!({ "Err": format!("rustvlan-dhcp does not implement {}", uri.path()) }),
            )
        })
        .with_state(plugin)
}

pub fn router<K: Kernel>(plugin: Arc<Plugin<K>>) -> Router {
    let router = Router::new().route(
        "/Plugin.Activate",
        constant("Plugin.Activate", |_| ActivateResponse {
            implements: vec!["NetworkDriver", "IpamDriver"],
        }),
    );
    ipam_routes(driver_routes(router), IpamName::Rustvlan)
        // rustvlan's own: finish the queued link deletes now (benchmarks, tools).
        .route(
            "/Rustvlan.Settle",
            rpc(post(|State(plugin): State<Arc<Plugin<K>>>| async move {
                match plugin.driver.process_pending().await {
                    Ok(n) => json_response(StatusCode::OK, &json!({ "Deleted": n })),
                    Err(e) => error_response(Api::Driver, &e),
                }
            })),
        )
        // rustvlan's own: the state as `rustvlan state` prints it.
        .route(
            "/Rustvlan.State",
            rpc(post(|State(plugin): State<Arc<Plugin<K>>>| async move {
                match plugin.dump().await {
                    Ok(v) => json_response(StatusCode::OK, &v),
                    Err(e) => error_response(Api::Driver, &e),
                }
            })),
        )
        .route("/metrics", get(metrics::<K>))
        .fallback(|uri: axum::http::Uri| async move {
            json_response(
                StatusCode::NOT_FOUND,
                &json!({ "Err": format!("rustvlan does not implement {}", uri.path()) }),
            )
        })
        .with_state(plugin)
}

/// The NetworkDriver calls.
fn driver_routes<K: Kernel>(router: Router<Arc<Plugin<K>>>) -> Router<Arc<Plugin<K>>> {
    use Api::Driver;
    router
        .route(
            "/NetworkDriver.GetCapabilities",
            constant("NetworkDriver.GetCapabilities", |_| driver::capabilities()),
        )
        .route(
            "/NetworkDriver.GwAllocCheck",
            route!(Driver, "NetworkDriver.GwAllocCheck", |p, r: GwAllocCheckRequest| p
                .driver
                .gateway_needs(&r.options.unwrap_or_default())
                .map(driver::gateway_answer)),
        )
        .route(
            "/NetworkDriver.CreateNetwork",
            route!(Driver, "NetworkDriver.CreateNetwork", |p, r: CreateNetworkRequest| p
                .create_network(r.into())
                .await
                .map(|()| Empty {})),
        )
        .route(
            "/NetworkDriver.DeleteNetwork",
            route!(Driver, "NetworkDriver.DeleteNetwork", |p, r: NetworkRequest| p
                .driver
                .delete_network(&r.network_id)
                .await
                .map(|()| Empty {})),
        )
        .route(
            "/NetworkDriver.CreateEndpoint",
            route!(Driver, "NetworkDriver.CreateEndpoint", |p, r: CreateEndpointRequest| p
                .driver
                .create_endpoint(r.into())
                .await
                .map(driver::endpoint_answer)),
        )
        .route(
            "/NetworkDriver.EndpointOperInfo",
            route!(Driver, "NetworkDriver.EndpointOperInfo", |p, r: EndpointRequest| Ok(
                driver::oper_info_answer(p.driver.endpoint_info(&r.endpoint_id))
            )),
        )
        .route(
            "/NetworkDriver.DeleteEndpoint",
            route!(Driver, "NetworkDriver.DeleteEndpoint", |p, r: EndpointRequest| p
                .driver
                .delete_endpoint(&r.into())
                .await
                .map(|()| Empty {})),
        )
        .route(
            "/NetworkDriver.Join",
            route!(Driver, "NetworkDriver.Join", |p, r: JoinRequest| p
                .driver
                .join(r.into())
                .await
                .map(driver::join_answer)),
        )
        .route(
            "/NetworkDriver.Leave",
            route!(Driver, "NetworkDriver.Leave", |p, r: EndpointRequest| {
                p.driver.leave(&r.into()).await;
                Ok(Empty {})
            }),
        )
        .route(
            "/NetworkDriver.ProgramExternalConnectivity",
            route!(
                Driver,
                "NetworkDriver.ProgramExternalConnectivity",
                |_p, _r: EndpointRequest| Ok(Empty {})
            ),
        )
        .route(
            "/NetworkDriver.RevokeExternalConnectivity",
            route!(
                Driver,
                "NetworkDriver.RevokeExternalConnectivity",
                |_p, _r: EndpointRequest| Ok(Empty {})
            ),
        )
        .route(
            "/NetworkDriver.DiscoverNew",
            route!(Driver, "NetworkDriver.DiscoverNew", |_p, _r: DiscoveryRequest| Ok(
                Empty {}
            )),
        )
        .route(
            "/NetworkDriver.DiscoverDelete",
            route!(Driver, "NetworkDriver.DiscoverDelete", |_p, _r: DiscoveryRequest| Ok(
                Empty {}
            )),
        )
        .route(
            "/NetworkDriver.AllocateNetwork",
            route!(Driver, "NetworkDriver.AllocateNetwork", |_p, _r: NetworkRequest| Ok(
                AllocateNetworkResponse::default()
            )),
        )
        .route(
            "/NetworkDriver.FreeNetwork",
            route!(Driver, "NetworkDriver.FreeNetwork", |_p, _r: NetworkRequest| Ok(
                Empty {}
            )),
        )
}
