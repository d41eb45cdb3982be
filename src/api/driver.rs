//! The NetworkDriver calls in Docker's words and the driver's: requests turned into
//! [`NetworkSpec`], [`EndpointSpec`], [`JoinSpec`] and [`EndpointRef`], answers into
//! Docker's JSON, the capabilities dockerd asks for.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::wire::{
    CreateEndpointRequest, CreateEndpointResponse, CreateNetworkRequest, DataScope, DriverCapabilities,
    EndpointOperInfoResponse, EndpointRequest, GwAllocCheckResponse, InterfaceAnswer, InterfaceName, IpamData,
    JoinRequest, JoinResponse, ROUTE_TYPE_CONNECTED, ROUTE_TYPE_NEXT_HOP, StaticRoute,
};
use crate::driver::{
    EndpointCreated, EndpointInfo, EndpointRef, EndpointSpec, GatewayNeeds, JoinAnswer, JoinSpec, NetworkSpec, Route,
    SubnetSpec,
};

pub fn capabilities() -> DriverCapabilities {
    DriverCapabilities {
        scope: DataScope::Local,
        connectivity_scope: DataScope::Global,
        gw_alloc_checker: true,
    }
}

pub fn gateway_answer(needs: GatewayNeeds) -> GwAllocCheckResponse {
    GwAllocCheckResponse {
        skip_ipv4: !needs.ipv4,
        skip_ipv6: !needs.ipv6,
    }
}

fn subnet_spec(data: IpamData) -> SubnetSpec {
    SubnetSpec {
        address_space: data.address_space,
        pool: data.pool,
        gateway: data.gateway,
        aux_addresses: data.aux_addresses.unwrap_or_default(),
    }
}

impl From<CreateNetworkRequest> for NetworkSpec {
    fn from(req: CreateNetworkRequest) -> NetworkSpec {
        let subnets = |data: Option<Vec<IpamData>>| data.unwrap_or_default().into_iter().map(subnet_spec).collect();
        NetworkSpec {
            network_id: req.network_id,
            options: req.options.unwrap_or_default(),
            ipv4: subnets(req.ipv4_data),
            ipv6: subnets(req.ipv6_data),
            host_address: None,
        }
    }
}

impl From<CreateEndpointRequest> for EndpointSpec {
    fn from(req: CreateEndpointRequest) -> EndpointSpec {
        let iface = req.interface.unwrap_or_default();
        EndpointSpec {
            network_id: req.network_id,
            endpoint_id: req.endpoint_id,
            ipv4: iface.address,
            ipv6: iface.address_ipv6,
            mac: iface.mac_address,
            options: req.options.unwrap_or_default(),
        }
    }
}

pub fn endpoint_answer(created: EndpointCreated) -> CreateEndpointResponse {
    CreateEndpointResponse {
        interface: created.chosen_mac.map(|mac| InterfaceAnswer {
            mac_address: Some(mac.to_string()),
        }),
    }
}

impl From<EndpointRequest> for EndpointRef {
    fn from(req: EndpointRequest) -> EndpointRef {
        EndpointRef::new(req.network_id, req.endpoint_id)
    }
}

impl From<JoinRequest> for JoinSpec {
    fn from(req: JoinRequest) -> JoinSpec {
        JoinSpec {
            endpoint: EndpointRef::new(req.network_id, req.endpoint_id),
            sandbox: req.sandbox_key,
        }
    }
}

pub fn join_answer(answer: JoinAnswer) -> JoinResponse {
    JoinResponse {
        interface_name: InterfaceName {
            src_name: answer.link_name,
            dst_prefix: answer.name_prefix.to_string(),
        },
        // Bare IPs: dockerd parses them with net.ParseIP.
        gateway: answer.gateway.map(|g| g.to_string()),
        gateway_ipv6: answer.gateway_v6.map(|g| g.to_string()),
        static_routes: answer.routes.into_iter().map(static_route).collect(),
        // Never attach rustvlan containers to docker_gwbridge.
        disable_gateway_service: true,
    }
}

fn static_route(route: Route) -> StaticRoute {
    match route {
        Route::Connected { destination } => StaticRoute {
            destination: destination.to_string(),
            route_type: ROUTE_TYPE_CONNECTED,
            next_hop: None,
        },
        Route::Via { destination, next_hop } => StaticRoute {
            destination: destination.to_string(),
            route_type: ROUTE_TYPE_NEXT_HOP,
            next_hop: Some(next_hop.to_string()),
        },
    }
}

/// An unknown endpoint answers an empty map, as before.
pub fn oper_info_answer(info: Option<EndpointInfo>) -> EndpointOperInfoResponse {
    let mut value: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(info) = info {
        value.insert("link_name".to_string(), json!(info.link_name));
        if let Some(mac) = info.mac {
            value.insert("mac_address".to_string(), json!(mac));
        }
        if let Some((parent, mode)) = info.parent {
            value.insert("parent".to_string(), json!(parent));
            value.insert("mode".to_string(), json!(mode));
        }
    }
    EndpointOperInfoResponse { value }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn join_answers_bare_gateways_and_typed_routes() {
        let answer = JoinAnswer {
            link_name: "rv111111111111".into(),
            name_prefix: "eth",
            gateway: Some("10.77.0.1".parse().unwrap()),
            gateway_v6: None,
            routes: vec![
                Route::Connected {
                    destination: "0.0.0.0/0".parse().unwrap(),
                },
                Route::Via {
                    destination: "10.9.0.0/16".parse().unwrap(),
                    next_hop: "10.77.0.254".parse::<IpAddr>().unwrap(),
                },
            ],
        };
        let json = serde_json::to_value(join_answer(answer)).unwrap();
        assert_eq!(
            json,
            json!({
                "InterfaceName": {"SrcName": "rv111111111111", "DstPrefix": "eth"},
                "Gateway": "10.77.0.1",
                "StaticRoutes": [
                    {"Destination": "0.0.0.0/0", "RouteType": 1},
                    {"Destination": "10.9.0.0/16", "RouteType": 0, "NextHop": "10.77.0.254"},
                ],
                "DisableGatewayService": true,
            })
        );
    }

    #[test]
    fn only_a_chosen_mac_is_answered() {
        let none = serde_json::to_value(endpoint_answer(EndpointCreated::default())).unwrap();
        assert_eq!(none, json!({}));
        let mac = "02:42:0a:4d:00:02".parse().unwrap();
        let chosen = serde_json::to_value(endpoint_answer(EndpointCreated { chosen_mac: Some(mac) })).unwrap();
        assert_eq!(chosen, json!({"Interface": {"MacAddress": "02:42:0a:4d:00:02"}}));
    }
}
