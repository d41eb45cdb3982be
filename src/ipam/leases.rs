//! `--ipam-driver rustvlan-dhcp`: an endpoint's address is a lease from the LAN's DHCP
//! server, taken at RequestAddress (before the container starts) on the parent of the
//! network that claimed the pool, kept in the store, renewed in the background for as
//! long as dockerd holds the address, and released at ReleaseAddress.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Ipam;
use crate::dhcp::{DhcpError, Granted, Identity};
use crate::error::{Error, Result};
use crate::kernel::{Kernel, LinkInfo};
use crate::keys::ENDPOINT_MAC_OPTION;
use crate::model::{DhcpEvent, IpvlanMode, LeaseRecord, LinkMode, MacAddr, NetworkRecord, PoolRecord, lease_key};
use crate::state::Change;
use crate::util::short_id;

/// How long a RequestAddress may wait for the server: well under the 30 s dockerd gives
/// a managed plugin, and enough for a server that pings an address before offering it.
pub const ACQUIRE_BUDGET: Duration = Duration::from_secs(8);
/// A renewal's own budget; a renewal that gets no answer is tried again later.
const RENEW_BUDGET: Duration = Duration::from_secs(5);
/// How soon a renewal of an expired lease is tried again (as INIT-REBOOT).
const EXPIRED_RETRY_SECS: u64 = 10;
/// Renewals on their way at once: a server outage costs each lease its own budget, not
/// one lease's budget after another's.
const RENEWALS_IN_FLIGHT: usize = 32;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Up to a twentieth of T1, the same for a lease each time: leases taken together (a
/// `docker compose up`) are not all renewed in the same second.
fn jitter_secs(lease: &LeaseRecord) -> u64 {
    let spread = u64::from(lease.t1_secs / 20).max(1);
    crate::util::stable_hash(&[lease.key().as_bytes(), lease.mac.0.as_slice()]) % spread
}

/// When a lease whose renewal failed at `now` is tried again (RFC 2131 4.4.5): half the
/// time left until T2 (then until expiry), but not sooner than a minute, or an eighth
/// of the lease when that is shorter, and never past T2 or expiry themselves. After
/// expiry, every [`EXPIRED_RETRY_SECS`].
fn retry_time(lease: &LeaseRecord, now: u64) -> u64 {
    let rebind_at = lease.acked_at + u64::from(lease.t2_secs);
    let deadline = if now < rebind_at {
        rebind_at
    } else if now < lease.expires_at() {
        lease.expires_at()
    } else {
        return now + EXPIRED_RETRY_SECS;
    };
    let left = deadline - now;
    let floor = (u64::from(lease.lease_secs) / 8).clamp(1, 60);
    now + (left / 2).max(floor.min(left)).max(1)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}

impl LeaseRecord {
    fn identity(&self) -> Identity {
        Identity {
            mac: self.mac,
            client_id: unhex(&self.client_id),
        }
    }
}

fn dhcp_error(e: DhcpError) -> Error {
    match e {
        DhcpError::NoAnswer { .. } => Error::unavailable(e.to_string()),
        DhcpError::Refused { .. } => Error::conflict(e.to_string()),
        DhcpError::Unusable { .. } => Error::unavailable(e.to_string()),
        _ => Error::kernel(e.to_string()),
    }
}

impl<K: Kernel> Ipam<K> {
    /// A DHCP pool is bound to its network at CreateNetwork, by subnet: the newest
    /// unclaimed pool of that subnet. Two networks of one subnet (both without
    /// `--subnet`, say) being created at the same moment could take each other's pool,
    /// and so each other's parent; the second RequestPool is refused instead while the
    /// first pool, made in the last 10 s, waits for its CreateNetwork.
    pub(crate) fn check_no_dhcp_pool_being_bound(&self, request: &crate::ipam::PoolRequest) -> Result<()> {
        let made = self.dhcp_pools_made.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.state();
        let subnet = if request.pool.is_empty() {
            "0.0.0.0/0"
        } else {
            request.pool.as_str()
        };
        let busy = state.ipam.pools().any(|p| {
            p.record.dhcp
                && p.record.claimed_by.is_none()
                && p.record.address_space == request.address_space
                && p.record.pool.to_string() == subnet
                && made
                    .get(&p.record.seq)
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(10))
        });
        if busy {
            return Err(Error::conflict(format!(
                "another rustvlan-dhcp network of subnet {subnet} is being created right now; retry in a moment (its \
                 pool is bound when its CreateNetwork comes)"
            )));
        }
        Ok(())
    }

    /// The DHCP pool and the network that claimed it, if `pool_id` is one.
    fn dhcp_pool(&self, pool_id: &str) -> Result<Option<(PoolRecord, Option<NetworkRecord>)>> {
        let state = self.state();
        let Some(pool) = state.ipam.lookup(pool_id)?.filter(|p| p.record.dhcp) else {
            return Ok(None);
        };
        let network = pool
            .record
            .claimed_by
            .as_ref()
            .and_then(|id| state.networks.get(id))
            .cloned();
        Ok(Some((pool.record.clone(), network)))
    }

    /// RequestAddress on a DHCP pool, for an endpoint (a gateway request is
    /// bookkeeping, answered by the allocator).
    pub(crate) async fn request_lease(
        &self,
        pool_id: &str,
        wanted: Option<IpAddr>,
        options: &std::collections::BTreeMap<String, String>,
    ) -> Result<ipnetwork::IpNetwork> {
        let Some((pool, network)) = self.dhcp_pool(pool_id)? else {
            return Err(Error::not_found(format!("DHCP pool {pool_id} not found")));
        };
        let network = network.ok_or_else(|| {
            Error::invalid(format!(
                "pool {pool_id} belongs to no rustvlan network yet: use --ipam-driver rustvlan-dhcp with -d rustvlan"
            ))
        })?;
        let wanted = match wanted {
            Some(IpAddr::V4(ip)) => Some(ip),
            Some(ip) => return Err(Error::invalid(format!("{ip} is not IPv4: DHCP leases are IPv4"))),
            None => None,
        };
        let endpoint_mac = endpoint_mac(options)?;
        let parent = self.kernel.link(&network.parent).await?.ok_or_else(|| {
            Error::kernel(format!(
                "parent interface {} of network {} is missing",
                network.parent,
                short_id(&network.id)
            ))
        })?;
        let identity = lease_identity(&network, &parent, endpoint_mac)?;
        let granted = self
            .dhcp
            .acquire(parent.index, &network.parent, &identity, wanted, ACQUIRE_BUDGET)
            .await
            .map_err(dhcp_error)?;
        let give_back = || {
            let _ = self.dhcp.release(
                parent.index,
                &network.parent,
                &identity,
                granted.address.ip(),
                granted.server,
            );
        };
        let checked = match check_against_network(&granted, &pool, &network) {
            Ok(()) => self.check_not_the_host_s(&granted, parent.index, &network.parent).await,
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            give_back();
            return Err(e);
        }
        let lease = new_lease(pool_id, &network.parent, &identity, &granted);
        let committed = self
            .commit(|state| match state.leases.get(&lease.key()) {
                Some(holder) if holder.mac != lease.mac || holder.client_id != lease.client_id => {
                    Ok((Some(granted_twice(&lease, holder)), Vec::new()))
                }
                _ => Ok((None, vec![Change::PutLease(lease.clone())])),
            })
            .await;
        match committed {
            Ok(None) => {}
            // No RELEASE: a server that keys leases by MAC would take it for the
            // holder's, whose lease must stay as it is.
            Ok(Some(twice)) => return Err(twice),
            Err(e) => {
                give_back();
                return Err(e);
            }
        }
        self.metrics.count_dhcp(DhcpEvent::Acquired);
        tracing::info!(
            network = short_id(&network.id),
            address = %granted.address,
            server = %granted.server,
            mac = %identity.mac,
            lease_secs = granted.lease_secs,
            "DHCP lease taken"
        );
        Ok(ipnetwork::IpNetwork::V4(granted.address))
    }

    /// A server must not lease the host's own address on the parent.
    async fn check_not_the_host_s(&self, granted: &Granted, parent_index: u32, parent: &str) -> Result<()> {
        let own = self.kernel.addresses(parent_index).await?;
        if own.iter().any(|a| a.ip() == IpAddr::V4(granted.address.ip())) {
            return Err(Error::unavailable(format!(
                "the answer of DHCP server {} is unusable: the offered address {} is this host's own on {parent}; \
                 fix the server's configuration (or stop the rogue server answering on this LAN)",
                granted.server, granted.address
            )));
        }
        Ok(())
    }

    /// ReleaseAddress on a DHCP pool: the lease is forgotten, then RELEASE goes to its
    /// server. Ok(false): no such lease (a gateway, or a repeat).
    pub(crate) async fn release_lease(&self, pool_id: &str, ip: IpAddr) -> Result<bool> {
        let key = lease_key(pool_id, ip);
        let lease = self
            .commit(|state| match state.leases.get(&key) {
                Some(l) => Ok((Some(l.clone()), vec![Change::DelLease(key.clone())])),
                None => Ok((None, Vec::new())),
            })
            .await?;
        let Some(lease) = lease else { return Ok(false) };
        self.send_release(&lease).await;
        Ok(true)
    }

    /// Best effort: a lease whose RELEASE is lost expires on the server by itself.
    pub(super) async fn send_release(&self, lease: &LeaseRecord) {
        let sent = match self.kernel.link(&lease.parent).await {
            Ok(Some(parent)) => self
                .dhcp
                .release(
                    parent.index,
                    &lease.parent,
                    &lease.identity(),
                    lease.address.ip(),
                    lease.server,
                )
                .map_err(|e| e.to_string()),
            Ok(None) => Err(format!("parent {} is gone", lease.parent)),
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(()) => {
                self.metrics.count_dhcp(DhcpEvent::Released);
                tracing::info!(address = %lease.address, server = %lease.server, "DHCP lease released");
            }
            Err(e) => {
                tracing::warn!(address = %lease.address, "DHCP release not sent: {e}; the lease expires on its own")
            }
        }
    }

    /// The leases of a pool being released go too (dockerd released their addresses
    /// first, unless it skipped that).
    pub(crate) async fn release_pool_leases(&self, pool_id: &str) -> Result<()> {
        let gone = self
            .commit(|state| {
                let gone: Vec<LeaseRecord> = state
                    .leases
                    .values()
                    .filter(|l| l.pool_id == pool_id)
                    .cloned()
                    .collect();
                let changes = gone.iter().map(|l| Change::DelLease(l.key())).collect();
                Ok((gone, changes))
            })
            .await?;
        for lease in &gone {
            self.send_release(lease).await;
        }
        Ok(())
    }

    /// Renews every lease whose T1 has come (and, after a restart, every lease past
    /// it), up to [`RENEWALS_IN_FLIGHT`] at once, checking every second. A lease whose
    /// renewal failed is tried again as RFC 2131 4.4.5 says (see [`retry_time`]). A NAK
    /// or a different address cannot be pushed into a running container: it is
    /// recorded on the lease, shown by status and counted (and the different address is
    /// released at once).
    pub async fn renew_leases(self: std::sync::Arc<Self>) {
        let retry_at: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        let slots = Arc::new(tokio::sync::Semaphore::new(RENEWALS_IN_FLIGHT));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let due = self.leases_due(&retry_at, &in_flight, now_secs());
            for lease in due {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                lock(&in_flight).insert(lease.key());
                let (plugin, retry_at, in_flight) = (Arc::clone(&self), Arc::clone(&retry_at), Arc::clone(&in_flight));
                tokio::spawn(async move {
                    let renewed = plugin.renew_one(&lease).await.is_ok();
                    let key = lease.key();
                    if renewed {
                        lock(&retry_at).remove(&key);
                    } else {
                        lock(&retry_at).insert(key.clone(), retry_time(&lease, now_secs()));
                    }
                    lock(&in_flight).remove(&key);
                    drop(slot);
                });
            }
        }
    }

    /// The leases to renew now: past T1 (spread a little, see [`jitter_secs`]), not
    /// waiting for a retry, not being renewed.
    fn leases_due(
        &self,
        retry_at: &Mutex<HashMap<String, u64>>,
        in_flight: &Mutex<HashSet<String>>,
        now: u64,
    ) -> Vec<LeaseRecord> {
        let state = self.state();
        let mut retry_at = lock(retry_at);
        retry_at.retain(|key, _| state.leases.contains_key(key));
        let in_flight = lock(in_flight);
        state
            .leases
            .values()
            .filter(|l| {
                let key = l.key();
                l.renew_at() + jitter_secs(l) <= now
                    && retry_at.get(&key).is_none_or(|at| *at <= now)
                    && !in_flight.contains(&key)
            })
            .cloned()
            .collect()
    }

    async fn renew_one(&self, lease: &LeaseRecord) -> std::result::Result<(), ()> {
        let renewed = self.try_renew(lease).await;
        // Bound to this identity on the server now, and used by nothing: given back.
        let other_address = match &renewed {
            Ok(granted) if granted.address.ip() != lease.address.ip() => Some(LeaseRecord {
                address: granted.address,
                server: granted.server,
                ..lease.clone()
            }),
            _ => None,
        };
        let (updated, event) = renewal_outcome(lease, renewed);
        if let Some(other) = &other_address {
            self.send_release(other).await;
        }
        self.metrics.count_dhcp(event);
        if event == DhcpEvent::Renewed {
            tracing::debug!(address = %lease.address, renewals = updated.renewals, "DHCP lease renewed");
        } else {
            tracing::error!(address = %lease.address, trouble = ?updated.trouble, "DHCP lease renewal failed");
        }
        let key = lease.key();
        let still_ours = self
            .commit(|state| {
                // Only onto the lease this renewal started from: released meanwhile (and
                // perhaps leased again to another endpoint), there is nothing to record.
                if state.leases.get(&key) == Some(lease) {
                    Ok((true, vec![Change::PutLease(updated.clone())]))
                } else {
                    Ok((false, Vec::new()))
                }
            })
            .await;
        let same_identity_holds = |state: &crate::state::State| {
            state
                .leases
                .get(&key)
                .is_some_and(|l| l.mac == lease.mac && l.client_id == lease.client_id)
        };
        // The server extended a lease released meanwhile: it gets a RELEASE of its own,
        // unless the same identity holds that address again.
        if still_ours.is_ok_and(|ours| !ours) && event == DhcpEvent::Renewed && !same_identity_holds(&self.state()) {
            self.send_release(lease).await;
        }
        if event == DhcpEvent::Renewed { Ok(()) } else { Err(()) }
    }

    async fn try_renew(&self, lease: &LeaseRecord) -> std::result::Result<Granted, RenewFailure> {
        let parent = match self.kernel.link(&lease.parent).await {
            Ok(Some(parent)) => parent,
            Ok(None) => return Err(RenewFailure::Parent(format!("parent {} is missing", lease.parent))),
            Err(e) => return Err(RenewFailure::Parent(e.to_string())),
        };
        self.dhcp
            .renew(
                parent.index,
                &lease.parent,
                &lease.identity(),
                lease.address.ip(),
                // Past T2 (rebinding), any server may extend the lease.
                (now_secs() < lease.acked_at + u64::from(lease.t2_secs)).then_some(lease.server),
                RENEW_BUDGET,
            )
            .await
            .map_err(RenewFailure::Dhcp)
    }
}

/// The endpoint's MAC that dockerd sends to IPAMs that ask for it.
fn endpoint_mac(options: &std::collections::BTreeMap<String, String>) -> Result<MacAddr> {
    let text = options.get(ENDPOINT_MAC_OPTION).ok_or_else(|| {
        Error::invalid(format!(
            "RequestAddress on a rustvlan-dhcp pool came without the endpoint's MAC ({ENDPOINT_MAC_OPTION}); \
             dockerd sends it to IPAMs that ask for it"
        ))
    })?;
    text.parse()
        .map_err(|e: String| Error::invalid(format!("{ENDPOINT_MAC_OPTION} {e}")))
}

/// Who the lease is for: the endpoint's MAC on macvlan; on ipvlan L2, whose links all
/// have the parent's MAC, a client id of the endpoint's own.
fn lease_identity(network: &NetworkRecord, parent: &LinkInfo, endpoint_mac: MacAddr) -> Result<Identity> {
    match network.link {
        LinkMode::Macvlan { .. } => Ok(Identity::of_mac(endpoint_mac)),
        LinkMode::Ipvlan {
            mode: IpvlanMode::L2, ..
        } => {
            // Every ipvlan link has the parent's MAC: a client-id of the endpoint's own
            // keeps the leases apart (type 0, RFC 2132).
            let mac = parent
                .mac
                .ok_or_else(|| Error::kernel(format!("parent {} has no Ethernet address", network.parent)))?;
            let mut client_id = vec![0];
            client_id.extend_from_slice(format!("rustvlan:{endpoint_mac}").as_bytes());
            Ok(Identity { mac, client_id })
        }
        LinkMode::Ipvlan { mode, .. } => Err(Error::invalid(format!(
            "ipvlan {mode} routes instead of bridging, so its containers have no LAN broadcast domain for DHCP; \
             use ipvlan_mode=l2, or static addresses with --ipam-driver rustvlan"
        ))),
    }
}

fn new_lease(pool_id: &str, parent: &str, identity: &Identity, granted: &Granted) -> LeaseRecord {
    LeaseRecord {
        pool_id: pool_id.to_string(),
        address: granted.address,
        router: granted.router,
        routes: granted.routes.clone(),
        server: granted.server,
        parent: parent.to_string(),
        mac: identity.mac,
        client_id: hex(&identity.client_id),
        lease_secs: granted.lease_secs,
        t1_secs: granted.t1_secs,
        t2_secs: granted.t2_secs,
        acked_at: now_secs(),
        renewals: 0,
        trouble: None,
    }
}

/// Why a renewal brought no lease.
enum RenewFailure {
    Dhcp(DhcpError),
    /// The parent could not be found or read.
    Parent(String),
}

impl std::fmt::Display for RenewFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenewFailure::Dhcp(e) => e.fmt(f),
            RenewFailure::Parent(why) => f.write_str(why),
        }
    }
}

/// The lease as a renewal's result leaves it, and the event to count.
fn renewal_outcome(
    lease: &LeaseRecord,
    result: std::result::Result<Granted, RenewFailure>,
) -> (LeaseRecord, DhcpEvent) {
    match result {
        Ok(granted) if granted.address.ip() == lease.address.ip() => (
            LeaseRecord {
                lease_secs: granted.lease_secs,
                t1_secs: granted.t1_secs,
                t2_secs: granted.t2_secs,
                router: granted.router.or(lease.router),
                routes: granted.routes.clone(),
                server: granted.server,
                acked_at: now_secs(),
                renewals: lease.renewals + 1,
                trouble: None,
                ..lease.clone()
            },
            DhcpEvent::Renewed,
        ),
        Ok(granted) => (
            LeaseRecord {
                trouble: Some(format!(
                    "the server answered with another address, {}; the container keeps {}",
                    granted.address, lease.address
                )),
                ..lease.clone()
            },
            DhcpEvent::Changed,
        ),
        Err(e) => {
            let expired = now_secs() >= lease.expires_at();
            let event = match e {
                RenewFailure::Dhcp(DhcpError::Refused { .. }) => DhcpEvent::Nak,
                _ if expired => DhcpEvent::Expired,
                _ => DhcpEvent::NoAnswer,
            };
            let trouble = if expired {
                format!("expired; last renewal: {e}")
            } else {
                e.to_string()
            };
            (
                LeaseRecord {
                    trouble: Some(trouble),
                    ..lease.clone()
                },
                event,
            )
        }
    }
}

/// The refusal of an address the server gave a second endpoint while a first holds it.
fn granted_twice(lease: &LeaseRecord, holder: &LeaseRecord) -> Error {
    let cause = if holder.mac == lease.mac {
        "the server ignores the client identifier and keys leases by MAC, and ipvlan endpoints share their \
         parent's MAC; make the server use the client identifier (ISC Kea: match-client-id true; ISC dhcpd: no \
         ignore-client-uids; dnsmasq: no dhcp-ignore-clid), or use macvlan"
    } else {
        "the server leased one address to two MACs; check its lease database for a duplicate"
    };
    Error::conflict(format!(
        "DHCP server {} gave {} to this endpoint while rustvlan holds it for another (MAC {}): {cause}; the other \
         endpoint's lease is left as it is",
        lease.server, lease.address, holder.mac
    ))
}

/// A lease must fit what the user said: `--subnet` (the same subnet) and `--gateway`.
fn check_against_network(granted: &Granted, pool: &PoolRecord, network: &NetworkRecord) -> Result<()> {
    let lease_net = ipnetwork::IpNetwork::V4(
        ipnetwork::Ipv4Network::new(granted.address.network(), granted.address.prefix()).expect("same prefix"),
    );
    if pool.pool.prefix() != 0 && lease_net != pool.pool {
        return Err(Error::conflict(format!(
            "the DHCP server {} offered {} (subnet {lease_net}), but the network's --subnet is {}; fix --subnet, or \
             leave it out to take the subnet from the leases",
            granted.server, granted.address, pool.pool
        )));
    }
    let gateway = network
        .ipv4
        .iter()
        .find(|s| s.pool == pool.pool)
        .and_then(|s| s.gateway)
        .map(|g| g.ip())
        // The subnet's own address is what RequestPool gave dockerd for "no --gateway".
        .filter(|g| *g != pool.pool.network());
    if let (Some(gateway), Some(router)) = (gateway, granted.router)
        && gateway != IpAddr::V4(router)
    {
        return Err(Error::conflict(format!(
            "the DHCP server {} gives router {router}, but the network's --gateway is {gateway}; fix --gateway, or \
             leave it out to take the router from the leases",
            granted.server
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(acked_at: u64, lease_secs: u32, t1_secs: u32, t2_secs: u32) -> LeaseRecord {
        LeaseRecord {
            pool_id: "rustvlan-local/0.0.0.0/0#1".into(),
            address: "10.64.0.7/24".parse().unwrap(),
            router: None,
            routes: Vec::new(),
            server: "10.64.0.1".parse().unwrap(),
            parent: "eth0".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 7]),
            client_id: "01020000000007".into(),
            lease_secs,
            t1_secs,
            t2_secs,
            acked_at,
            renewals: 0,
            trouble: None,
        }
    }

    #[test]
    fn a_failed_renewal_is_retried_at_half_the_time_left_as_rfc_2131_says() {
        let hour = lease(0, 3600, 1800, 3150);
        // Before T2: half the time left until T2, at least a minute, never past T2.
        assert_eq!(retry_time(&hour, 2800), 2975);
        assert_eq!(retry_time(&hour, 3100), 3150);
        // Past T2: half the time left until expiry.
        assert_eq!(retry_time(&hour, 3150), 3375);
        assert_eq!(retry_time(&hour, 3590), 3600);
        // Expired: tried again every few seconds.
        assert_eq!(retry_time(&hour, 3600), 3600 + EXPIRED_RETRY_SECS);
        // A short lease: the floor is an eighth of it, not a minute.
        let short = lease(0, 120, 3, 5);
        assert_eq!(retry_time(&short, 4), 5);
        assert_eq!(retry_time(&short, 8), 64);
        assert_eq!(retry_time(&short, 110), 120);
    }

    #[test]
    fn jitter_spreads_renewals_within_a_twentieth_of_t1() {
        let spread: HashSet<u64> = (0..50u8)
            .map(|n| {
                let mut l = lease(0, 86_400, 43_200, 75_600);
                l.mac = MacAddr([2, 0, 0, 0, 1, n]);
                jitter_secs(&l)
            })
            .collect();
        assert!(spread.iter().all(|j| *j < 43_200 / 20));
        assert!(spread.len() > 40, "{spread:?}");
        assert_eq!(jitter_secs(&lease(0, 120, 3, 5)), 0);
    }
}
