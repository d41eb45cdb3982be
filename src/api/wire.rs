//! JSON bodies of the libnetwork remote network driver API and the IPAM plugin API,
//! as dockerd 20.10 sends and reads them (libnetwork docs/remote.md, docs/ipam.md).
//!
//! Requests keep addresses as strings: the driver validates them itself so that a bad
//! value gets an error naming the field and the value, not serde's generic message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The media type dockerd expects on every plugin answer.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// An answer with no fields: `{}`.
#[derive(Debug, Default, Serialize)]
pub struct Empty {}

#[derive(Debug, Serialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<&'static str>,
}

// ----------------------------------------------------------------- NetworkDriver

/// libnetwork's data scope: whether a network's records are one host's or the swarm's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataScope {
    Local,
    Global,
}

#[derive(Debug, Serialize)]
pub struct DriverCapabilities {
    #[serde(rename = "Scope")]
    pub scope: DataScope,
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: DataScope,
    /// dockerd 28 and later then ask `GwAllocCheck` before CreateNetwork; older ones
    /// ignore the field.
    #[serde(rename = "GwAllocChecker")]
    pub gw_alloc_checker: bool,
}

/// Whether dockerd should reserve gateway addresses for a network about to be created.
/// `Options` are CreateNetwork's.
#[derive(Debug, Deserialize)]
pub struct GwAllocCheckRequest {
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Serialize)]
pub struct GwAllocCheckResponse {
    #[serde(rename = "SkipIPv4")]
    pub skip_ipv4: bool,
    #[serde(rename = "SkipIPv6")]
    pub skip_ipv6: bool,
}

/// One entry of CreateNetwork's `IPv4Data`/`IPv6Data`. `Pool`, `Gateway` and the
/// `AuxAddresses` values are CIDR strings.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamData {
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    #[serde(rename = "Pool", default)]
    pub pool: String,
    #[serde(rename = "Gateway", default)]
    pub gateway: Option<String>,
    #[serde(rename = "AuxAddresses", default)]
    pub aux_addresses: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// `com.docker.network.generic` (map of strings), `com.docker.network.internal`,
    /// `com.docker.network.enable_ipv6` (bools), and whatever else dockerd adds.
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, Value>>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Debug, Deserialize)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointInterface {
    #[serde(rename = "Address", default)]
    pub address: Option<String>,
    #[serde(rename = "AddressIPv6", default)]
    pub address_ipv6: Option<String>,
    #[serde(rename = "MacAddress", default)]
    pub mac_address: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, Value>>,
}

/// Only the fields the plugin fills in; dockerd keeps its own values for the rest.
#[derive(Debug, Default, Serialize, PartialEq, Eq, Clone)]
pub struct InterfaceAnswer {
    #[serde(rename = "MacAddress", skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct CreateEndpointResponse {
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<InterfaceAnswer>,
}

/// DeleteEndpoint, EndpointOperInfo, Leave, ProgramExternalConnectivity and
/// RevokeExternalConnectivity all carry these two ids (plus options we ignore).
#[derive(Debug, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Default, Serialize)]
pub struct EndpointOperInfoResponse {
    #[serde(rename = "Value")]
    pub value: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey", default)]
    pub sandbox_key: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

/// libnetwork's route types: 0 = via next hop, 1 = directly connected.
pub const ROUTE_TYPE_CONNECTED: u8 = 1;
/// libnetwork's route type for a route through a next hop.
pub const ROUTE_TYPE_NEXT_HOP: u8 = 0;

/// RequestPool's `Data` key for a gateway dockerd takes as given (it then asks for none).
pub const GATEWAY_DATA: &str = "com.docker.network.gateway";

/// RequestAddress's option with the endpoint's MAC, sent to IPAMs that ask for it.
pub use crate::keys::ENDPOINT_MAC_OPTION;

#[derive(Debug, Serialize)]
pub struct StaticRoute {
    #[serde(rename = "Destination")]
    pub destination: String,
    #[serde(rename = "RouteType")]
    pub route_type: u8,
    #[serde(rename = "NextHop", skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    /// A bare IP, not CIDR: dockerd parses it with net.ParseIP.
    #[serde(rename = "Gateway", skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "Option::is_none")]
    pub gateway_ipv6: Option<String>,
    #[serde(rename = "StaticRoutes", skip_serializing_if = "Vec::is_empty")]
    pub static_routes: Vec<StaticRoute>,
    #[serde(rename = "DisableGatewayService")]
    pub disable_gateway_service: bool,
}

#[derive(Debug, Deserialize)]
pub struct DiscoveryRequest {
    #[serde(rename = "DiscoveryType")]
    pub discovery_type: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct AllocateNetworkResponse {
    #[serde(rename = "Options")]
    pub options: BTreeMap<String, String>,
}

// ----------------------------------------------------------------- IpamDriver

#[derive(Debug, Serialize)]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

#[derive(Debug, Serialize)]
pub struct AddressSpacesResponse {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local: &'static str,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global: &'static str,
}

#[derive(Debug, Deserialize)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace")]
    pub address_space: String,
    #[serde(rename = "Pool", default)]
    pub pool: Option<String>,
    #[serde(rename = "SubPool", default)]
    pub sub_pool: Option<String>,
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, String>>,
    #[serde(rename = "V6", default)]
    pub v6: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

#[derive(Debug, Deserialize)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address", default)]
    pub address: Option<String>,
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, String>>,
}

/// Option key dockerd sets when it asks for the network's gateway.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
pub const REQUEST_ADDRESS_TYPE_GATEWAY: &str = "com.docker.network.gateway";

#[derive(Debug, Serialize)]
pub struct RequestAddressResponse {
    /// CIDR: dockerd parses it with types.ParseCIDR.
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
}
