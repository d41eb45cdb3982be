//! The allocator: pools and addresses. Pure logic, no I/O.
//!
//! Every request is answered in two steps: a `plan_*` function checks the request against
//! the current pools and returns the changes it implies (plus the answer), without
//! touching anything; the caller persists the changes and then hands each one to
//! [`Ipam::apply`]. Loading the store replays the same changes, so what is in memory is
//! always exactly what is on disk.
//!
//! Pool rule: every RequestPool makes a new pool with its own id, even for a subnet that
//! another pool already has. IPAM does not know the parent interface (dockerd asks for
//! the pool before it tells the driver anything), and the same subnet on two different
//! parents is legitimate. The driver refuses overlapping subnets on one parent at
//! CreateNetwork. Pools without an explicit subnet are carved from the default ranges
//! and never overlap any existing pool.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::addrset::AddressSet;
use crate::error::{Error, Result};
use crate::model::{Family, PoolRecord};

pub const LOCAL_ADDRESS_SPACE: &str = "rustvlan-local";
pub const GLOBAL_ADDRESS_SPACE: &str = "rustvlan-global";

#[derive(Debug, Clone)]
pub struct IpamConfig {
    /// Range that pools without an explicit subnet are carved from.
    pub default_v4_range: Ipv4Network,
    pub default_v4_prefix: u8,
    /// A ULA /48 picked at random when the store was made; v6 pools are /64s of it.
    pub default_v6_range: Ipv6Network,
    pub default_v6_prefix: u8,
}

/// One change to IPAM state, as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamChange {
    /// Makes a pool, or updates its record (a claim) keeping its allocations.
    PutPool(PoolRecord),
    /// Removes the pool and every address allocated in it.
    DelPool(u64),
    PutAddress {
        pool: u64,
        ip: IpAddr,
        gateway: bool,
    },
    DelAddress {
        pool: u64,
        ip: IpAddr,
    },
    /// The last address handed out dynamically; the next one is searched after it.
    SetCursor {
        pool: u64,
        ip: IpAddr,
    },
    SetNextPoolSeq(u64),
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub record: PoolRecord,
    /// The plan it shares (subnet and segment), kept so that loading 10 000 addresses
    /// does not rebuild the key for each.
    plan: PlanKey,
    allocated: AddressSet,
    gateways: BTreeSet<u128>,
    cursor: Option<u128>,
}

/// What RequestPool carries, still as the strings dockerd sent.
#[derive(Debug, Clone, Default)]
pub struct PoolRequest {
    /// `--ipam-driver rustvlan-dhcp`: the LAN's DHCP server hands out the addresses.
    pub dhcp: bool,
    pub address_space: String,
    pub pool: String,
    pub sub_pool: String,
    pub options: BTreeMap<String, String>,
    pub family: Family,
}

/// One RequestAddress: a dynamic address, a named one, or the network's gateway.
#[derive(Debug, Clone, Default)]
pub struct AddressRequest {
    pub pool_id: String,
    /// The address asked for by name, if any.
    pub address: Option<IpAddr>,
    /// The network's gateway (bookkeeping: the LAN's router, not a container's).
    pub gateway: bool,
    /// The request's options, as dockerd sent them (the endpoint's MAC for a DHCP pool).
    pub options: BTreeMap<String, String>,
}

/// A pool handed out.
#[derive(Debug, Clone)]
pub struct PoolGrant {
    pub pool_id: String,
    pub pool: IpNetwork,
    /// Its addresses are leases from the LAN's DHCP server (`rustvlan-dhcp`).
    pub dhcp: bool,
}

/// `--ipam-opt segment=NAME`: keeps apart two L2 segments that really reuse a subnet.
pub const SEGMENT_OPTION: &str = "segment";

/// `--ipam-opt scope=local|shared`: see [`PoolScope`].
pub const SCOPE_OPTION: &str = "scope";

/// Where a pool's addresses are held: this host's alone, or shared with the other hosts
/// through etcd (when rustvlan has `--etcd-endpoints`; otherwise every pool is local).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolScope {
    Local,
    #[default]
    Shared,
}

impl std::str::FromStr for PoolScope {
    type Err = Error;

    fn from_str(scope: &str) -> Result<PoolScope> {
        match scope {
            "local" => Ok(PoolScope::Local),
            "shared" => Ok(PoolScope::Shared),
            _ => Err(Error::invalid(format!(
                "--ipam-opt scope={scope:?}: use scope=local (this host alone) or scope=shared (the default: shared \
                 through etcd when rustvlan has --etcd-endpoints)"
            ))),
        }
    }
}

impl PoolRequest {
    /// The scope asked for (checked when the request was read).
    pub fn scope(&self) -> PoolScope {
        self.options
            .get(SCOPE_OPTION)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct Ipam {
    config: IpamConfig,
    pools: BTreeMap<u64, Pool>,
    next_seq: u64,
    /// The address plans pools share: every pool of one subnet and segment takes its
    /// addresses from one plan, as Docker's own IPAM does for macvlan networks whose
    /// subnets overlap, so that two networks on one LAN never hand out one address.
    plans: HashMap<PlanKey, Plan>,
}

/// A subnet and its segment name (empty for none).
type PlanKey = (IpNetwork, String);

/// The name of a pool's plan in etcd: `10.0.0.0_24`, or `10.0.0.0_24@site-a` with a
/// segment.
pub fn plan_name(record: &PoolRecord) -> String {
    let (subnet, segment) = plan_key(record);
    let subnet = subnet.to_string().replace('/', "_");
    if segment.is_empty() {
        subnet
    } else {
        format!("{subnet}@{segment}")
    }
}

fn plan_key(record: &PoolRecord) -> PlanKey {
    (
        record.pool,
        record.options.get(SEGMENT_OPTION).cloned().unwrap_or_default(),
    )
}

/// The union of the allocations of a plan's pools, by offset in the subnet.
#[derive(Debug, Clone, Default)]
struct Plan {
    taken: AddressSet,
    /// Offsets more than one pool holds (a gateway the networks share), and how many
    /// holders there are beyond the first.
    shared: BTreeMap<u128, u32>,
}

impl Plan {
    fn add(&mut self, offset: u128) {
        if !self.taken.insert(offset) {
            *self.shared.entry(offset).or_default() += 1;
        }
    }

    fn remove(&mut self, offset: u128) {
        match self.shared.get_mut(&offset) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.shared.remove(&offset);
            }
            None => {
                self.taken.remove(offset);
            }
        }
    }
}

fn addr_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn addr_from_bits(family: Family, bits: u128) -> IpAddr {
    if family == Family::V6 {
        IpAddr::V6(Ipv6Addr::from(bits))
    } else {
        // The caller only passes offsets inside an IPv4 pool, so this never truncates.
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    }
}

fn total_bits(net: &IpNetwork) -> u8 {
    Family::of(net).bits()
}

/// Number of addresses in `net` minus one (so a /0 does not overflow).
fn last_offset(net: &IpNetwork) -> u128 {
    let host_bits = u32::from(total_bits(net) - net.prefix());
    if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

fn network_start(net: &IpNetwork) -> u128 {
    addr_bits(net.network())
}

/// Parses a subnet, refusing host bits so that `10.0.0.1/24` is caught instead of
/// silently meaning `10.0.0.0/24`.
pub fn parse_subnet(field: &str, text: &str) -> Result<IpNetwork> {
    let net: IpNetwork = text
        .parse()
        .map_err(|_| Error::invalid(format!("{field} {text:?} is not a subnet in CIDR notation")))?;
    if net.ip() != net.network() {
        return Err(Error::invalid(format!(
            "{field} {text} has host bits set; the subnet is {}/{}",
            net.network(),
            net.prefix()
        )));
    }
    if net.prefix() == 0 {
        return Err(Error::invalid(format!(
            "{field} {text} is too large: a /0 pool is not allowed"
        )));
    }
    Ok(net)
}

/// Parses an address sent bare (`10.0.0.5`, as dockerd does) or in CIDR form.
pub fn parse_address(field: &str, text: &str) -> Result<IpAddr> {
    let bare = text.split_once('/').map_or(text, |(ip, _)| ip);
    let ip: IpAddr = bare
        .parse()
        .map_err(|_| Error::invalid(format!("{field} {text:?} is not an IP address")))?;
    if let Some((_, prefix)) = text.split_once('/') {
        let max = Family::of_ip(&ip).bits();
        match prefix.parse::<u8>() {
            Ok(p) if p <= max => {}
            _ => return Err(Error::invalid(format!("{field} {text:?} is not an IP address"))),
        }
    }
    Ok(ip)
}

impl Pool {
    fn new(record: PoolRecord) -> Self {
        Pool {
            plan: plan_key(&record),
            record,
            allocated: AddressSet::default(),
            gateways: BTreeSet::new(),
            cursor: None,
        }
    }

    pub fn id(&self) -> String {
        pool_id(&self.record)
    }

    fn family(&self) -> Family {
        Family::of(&self.record.pool)
    }

    fn offset(&self, ip: IpAddr) -> Option<u128> {
        (self.record.pool.contains(ip)).then(|| addr_bits(ip) - network_start(&self.record.pool))
    }

    fn ip_at(&self, offset: u128) -> IpAddr {
        addr_from_bits(self.family(), network_start(&self.record.pool) + offset)
    }

    /// The answer dockerd wants: the address with the pool's prefix length.
    fn cidr_at(&self, offset: u128) -> IpNetwork {
        IpNetwork::new(self.ip_at(offset), self.record.pool.prefix())
            .expect("the pool's own prefix length is valid for its family")
    }

    fn usable(&self) -> (u128, u128) {
        usable_offsets(&self.record.pool)
    }

    /// How many addresses the pool can hand out, its ip-range or not (static addresses
    /// and gateways may lie outside the range).
    pub fn capacity(&self) -> u128 {
        pool_capacity(&self.record.pool)
    }

    /// Where dynamic addresses come from: the usable range, narrowed to the SubPool.
    fn dynamic_range(&self) -> (u128, u128) {
        let (mut lo, mut hi) = self.usable();
        if let Some(sub) = self.record.sub_pool {
            let start = network_start(&sub) - network_start(&self.record.pool);
            lo = lo.max(start);
            hi = hi.min(start + last_offset(&sub));
        }
        (lo, hi)
    }

    fn describe(&self) -> String {
        match self.record.sub_pool {
            Some(sub) => format!("pool {} (ip-range {sub})", self.record.pool),
            None => format!("pool {}", self.record.pool),
        }
    }

    /// Checks that a named address may be handed out.
    fn check_named(&self, ip: IpAddr) -> Result<u128> {
        let pool = self.record.pool;
        let offset = self
            .offset(ip)
            .ok_or_else(|| Error::invalid(format!("address {ip} is outside pool {pool}")))?;
        let (lo, hi) = self.usable();
        if offset < lo {
            let what = if self.family() == Family::V6 {
                "the subnet-router anycast address"
            } else {
                "the network address"
            };
            return Err(Error::invalid(format!("address {ip} is {what} of pool {pool}")));
        }
        if offset > hi {
            return Err(Error::invalid(format!(
                "address {ip} is the broadcast address of pool {pool}"
            )));
        }
        if self.allocated.contains(offset) {
            return Err(Error::conflict(format!(
                "address {ip} is already in use in pool {pool}"
            )));
        }
        Ok(offset)
    }

    /// The gateway another pool of the plan already has, if any.
    fn shared_gateway<'a>(&self, siblings: impl Iterator<Item = &'a Pool>) -> Option<u128> {
        siblings.flat_map(|p| p.gateways.iter().copied()).min()
    }

    /// The next free dynamic address from `start` on, wrapping around.
    /// `taken`: what the pool's plan holds; `avoid`: what other hosts hold.
    fn next_dynamic(&self, taken: &AddressSet, avoid: &dyn Fn(u128) -> bool, start: SearchStart) -> Option<u128> {
        let (lo, hi) = self.dynamic_range();
        let at = |r: u64| lo + u128::from(r) % (hi - lo + 1);
        let within = |ip: IpAddr| self.offset(ip).filter(|o| (lo..=hi).contains(o));
        let start = match (start, self.cursor) {
            (SearchStart::At(ip), _) => within(ip).unwrap_or(lo),
            (SearchStart::After(ip), _) => within(ip).filter(|&o| o < hi).map_or(lo, |o| o + 1),
            (SearchStart::AfterCursor | SearchStart::AfterCursorOr(_), Some(c)) if c >= lo && c < hi => c + 1,
            (SearchStart::AfterCursorOr(r), _) => at(r),
            _ => lo,
        };
        first_free_avoiding(taken, avoid, start, hi)
            .or_else(|| first_free_avoiding(taken, avoid, lo, start.saturating_sub(1)))
    }

    pub fn is_gateway(&self, ip: IpAddr) -> bool {
        self.offset(ip).is_some_and(|o| self.gateways.contains(&o))
    }

    pub fn allocated(&self) -> impl Iterator<Item = (IpAddr, bool)> + '_ {
        self.allocated
            .iter()
            .map(|o| (self.ip_at(o), self.gateways.contains(&o)))
    }

    pub fn allocated_count(&self) -> u128 {
        self.allocated.len()
    }
}

/// Where the search for the next free dynamic address starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchStart {
    /// After the last address handed out (so a just-released one is not handed straight
    /// back), or at the start of the range.
    AfterCursor,
    /// After the last address handed out, or at this point of the range (a shared pool's
    /// first address: each host starts at a point of its own).
    AfterCursorOr(u64),
    /// After this address (where a shared pool's host last picked one), or at the start
    /// of the range when it is outside it.
    After(IpAddr),
    /// At this address, or at the start of the range when it is outside it.
    At(IpAddr),
}

/// The first offset in `from..=to` free in `taken` and not avoided.
fn first_free_avoiding(taken: &AddressSet, avoid: &dyn Fn(u128) -> bool, mut from: u128, to: u128) -> Option<u128> {
    loop {
        let found = taken.first_free(from, to)?;
        if !avoid(found) {
            return Some(found);
        }
        from = found.checked_add(1).filter(|f| *f <= to)?;
    }
}

/// The first and last offsets a pool may hand out. IPv4 reserves the network and
/// broadcast addresses except in /31 and /32 (RFC 3021); IPv6 reserves the subnet-router
/// anycast address (offset 0).
fn usable_offsets(pool: &IpNetwork) -> (u128, u128) {
    let last = last_offset(pool);
    match (Family::of(pool) == Family::V6, pool.prefix()) {
        (false, p) if p <= 30 => (1, last - 1),
        (false, _) => (0, last),
        (true, 128) => (0, 0),
        (true, _) => (1, last),
    }
}

/// How many addresses a pool of this subnet can hand out (an IPv6 /0 saturates).
pub fn pool_capacity(pool: &IpNetwork) -> u128 {
    let (lo, hi) = usable_offsets(pool);
    (hi - lo).saturating_add(1)
}

/// `rustvlan-local/10.77.0.0/24#7`: readable, and unique for the life of the store.
pub fn pool_id(record: &PoolRecord) -> String {
    format!("{}/{}#{}", record.address_space, record.pool, record.seq)
}

impl Ipam {
    pub fn new(config: IpamConfig) -> Self {
        Ipam {
            config,
            pools: BTreeMap::new(),
            next_seq: 1,
            plans: HashMap::new(),
        }
    }

    pub fn config(&self) -> &IpamConfig {
        &self.config
    }

    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    pub fn pool(&self, seq: u64) -> Option<&Pool> {
        self.pools.get(&seq)
    }

    /// Resolves a PoolID. `Ok(None)`: one of ours that no longer exists (a late
    /// release); an error: an id rustvlan never issued (another plugin's).
    pub fn lookup(&self, pool_id: &str) -> Result<Option<&Pool>> {
        let foreign = || Error::invalid(format!("pool ID {pool_id:?} was not issued by rustvlan"));
        let (prefix, seq) = pool_id.rsplit_once('#').ok_or_else(foreign)?;
        let seq: u64 = seq.parse().map_err(|_| foreign())?;
        let (space, cidr) = prefix.split_once('/').ok_or_else(foreign)?;
        if space != LOCAL_ADDRESS_SPACE && space != GLOBAL_ADDRESS_SPACE {
            return Err(foreign());
        }
        cidr.parse::<IpNetwork>().map_err(|_| foreign())?;
        Ok(self.pools.get(&seq).filter(|p| p.id() == pool_id))
    }

    /// The first and last address a pool hands out dynamically.
    pub fn dynamic_span(&self, pool_id: &str) -> Option<(IpAddr, IpAddr)> {
        let pool = self.lookup(pool_id).ok()??;
        let (lo, hi) = pool.dynamic_range();
        Some((pool.ip_at(lo), pool.ip_at(hi)))
    }

    /// The addresses the plan of `pool_id` holds from `first` to `last` (both in the
    /// pool), at most `most` of them.
    pub fn held_in(&self, pool_id: &str, first: IpAddr, last: IpAddr, most: usize) -> Vec<IpAddr> {
        let Ok(Some(pool)) = self.lookup(pool_id) else {
            return Vec::new();
        };
        let (Some(from), Some(to)) = (pool.offset(first), pool.offset(last)) else {
            return Vec::new();
        };
        self.plans.get(&pool.plan).map_or_else(Vec::new, |plan| {
            plan.taken.iter_in(from, to).take(most).map(|o| pool.ip_at(o)).collect()
        })
    }

    pub fn plan_request_pool(&self, req: &PoolRequest) -> Result<(PoolRecord, Vec<IpamChange>)> {
        if req.address_space != LOCAL_ADDRESS_SPACE && req.address_space != GLOBAL_ADDRESS_SPACE {
            return Err(Error::invalid(format!(
                "unknown address space {:?}; rustvlan serves {LOCAL_ADDRESS_SPACE:?} and {GLOBAL_ADDRESS_SPACE:?}",
                req.address_space
            )));
        }
        if req.dhcp && req.family == Family::V6 {
            return Err(Error::invalid(
                "rustvlan-dhcp hands out IPv4 leases only; give IPv6 networks --ipam-driver rustvlan",
            ));
        }
        if req.dhcp && !req.sub_pool.is_empty() {
            return Err(Error::invalid(format!(
                "--ip-range {} cannot be honoured with rustvlan-dhcp: the LAN's DHCP server decides the addresses",
                req.sub_pool
            )));
        }
        let pool = if req.dhcp && req.pool.is_empty() {
            // As Docker's null IPAM shows it: the leases bring their own subnets.
            IpNetwork::V4(Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("0 is a valid prefix"))
        } else if req.pool.is_empty() {
            if !req.sub_pool.is_empty() {
                return Err(Error::invalid(format!(
                    "SubPool {} needs an explicit Pool (--ip-range needs --subnet)",
                    req.sub_pool
                )));
            }
            self.pick_default_pool(req.family)?
        } else {
            let pool = parse_subnet("Pool", &req.pool)?;
            if Family::of(&pool) != req.family {
                return Err(Error::invalid(format!(
                    "Pool {pool} is an {} subnet but V6 is {}",
                    Family::of(&pool),
                    req.family == Family::V6
                )));
            }
            pool
        };
        let sub_pool = if req.sub_pool.is_empty() {
            None
        } else {
            let sub = parse_subnet("SubPool", &req.sub_pool)?;
            if sub.is_ipv6() != pool.is_ipv6() || !pool.contains(sub.network()) || sub.prefix() < pool.prefix() {
                return Err(Error::invalid(format!(
                    "SubPool {sub} (--ip-range) is not inside Pool {pool}"
                )));
            }
            Some(sub)
        };
        let record = PoolRecord {
            seq: self.next_seq,
            address_space: req.address_space.clone(),
            pool,
            sub_pool,
            options: req.options.clone(),
            claimed_by: None,
            shared: false,
            dhcp: req.dhcp,
        };
        let probe = Pool::new(record.clone());
        let (lo, hi) = probe.dynamic_range();
        if lo > hi {
            return Err(Error::invalid(format!(
                "{} has no usable address (network and broadcast addresses excluded)",
                probe.describe()
            )));
        }
        let changes = vec![
            IpamChange::PutPool(record.clone()),
            IpamChange::SetNextPoolSeq(self.next_seq + 1),
        ];
        Ok((record, changes))
    }

    /// The first subnet of the default range that overlaps no existing pool.
    fn pick_default_pool(&self, family: Family) -> Result<IpNetwork> {
        let (range, prefix) = if family == Family::V6 {
            (
                IpNetwork::V6(self.config.default_v6_range),
                self.config.default_v6_prefix,
            )
        } else {
            (
                IpNetwork::V4(self.config.default_v4_range),
                self.config.default_v4_prefix,
            )
        };
        let shift = u32::from(total_bits(&range) - prefix);
        let range_start = network_start(&range);
        let range_end = range_start + last_offset(&range);
        let candidates = 1u128 << (prefix - range.prefix());
        // Candidate indexes covered by existing pools, as sorted inclusive intervals.
        let mut taken: Vec<(u128, u128)> = self
            .pools
            .values()
            // A rustvlan-dhcp pool without --subnet (0.0.0.0/0) holds the subnets its
            // leases bring, never the default range as a whole.
            .filter(|p| !(p.record.dhcp && p.record.pool.prefix() == 0))
            .map(|p| p.record.pool)
            .filter(|p| Family::of(p) == family)
            .filter_map(|p| {
                let start = network_start(&p);
                let end = start + last_offset(&p);
                (start <= range_end && end >= range_start).then(|| {
                    let lo = start.max(range_start) - range_start;
                    let hi = end.min(range_end) - range_start;
                    (lo >> shift, hi >> shift)
                })
            })
            .collect();
        taken.sort_unstable();
        let mut index = 0u128;
        for (lo, hi) in taken {
            if lo > index {
                break;
            }
            index = index.max(hi + 1);
        }
        if index >= candidates {
            return Err(Error::exhausted(format!(
                "no free /{prefix} left in the default {} range {range}; give --subnet explicitly",
                family
            )));
        }
        let start = addr_from_bits(family, range_start + (index << shift));
        Ok(IpNetwork::new(start, prefix).expect("default prefix is valid"))
    }

    /// The pool a new network with this subnet uses: the newest unclaimed pool of that
    /// address space and subnet whose gateway (if the network has one) is allocated.
    /// dockerd asks for the pool and its gateway right before CreateNetwork, so that is
    /// this network's; the same subnet on another parent is another, older or claimed,
    /// pool.
    pub fn plan_claim(
        &self,
        address_space: &str,
        subnet: IpNetwork,
        gateway: Option<IpAddr>,
        network: &str,
    ) -> Option<IpamChange> {
        let pool = self.pools.values().rev().find(|p| {
            p.record.claimed_by.is_none()
                && p.record.address_space == address_space
                && p.record.pool == subnet
                && (p.record.dhcp || gateway.is_none_or(|g| p.offset(g).is_some_and(|o| p.allocated.contains(o))))
        })?;
        let mut record = pool.record.clone();
        record.claimed_by = Some(network.to_string());
        Some(IpamChange::PutPool(record))
    }

    pub fn plan_release_pool(&self, pool_id: &str) -> Result<Vec<IpamChange>> {
        Ok(match self.lookup(pool_id)? {
            Some(pool) => vec![IpamChange::DelPool(pool.record.seq)],
            None => Vec::new(),
        })
    }

    /// `address`: a named address (`--ip`, `--gateway`, `--aux-address`), or None for
    /// the next free one. `gateway`: dockerd asks for the network's gateway.
    pub fn plan_request_address(
        &self,
        pool_id: &str,
        address: Option<IpAddr>,
        gateway: bool,
    ) -> Result<(IpNetwork, Vec<IpamChange>)> {
        self.plan_request_address_avoiding(pool_id, address, gateway, &|_| false, SearchStart::AfterCursor)
    }

    /// [`Ipam::plan_request_address`], a dynamic address never one `avoid` names (what
    /// other hosts of a shared plan hold, or this host is claiming right now).
    pub fn plan_request_address_avoiding(
        &self,
        pool_id: &str,
        address: Option<IpAddr>,
        gateway: bool,
        avoid: &dyn Fn(IpAddr) -> bool,
        start: SearchStart,
    ) -> Result<(IpNetwork, Vec<IpamChange>)> {
        let pool = self
            .lookup(pool_id)?
            .ok_or_else(|| Error::not_found(format!("unknown pool ID {pool_id:?}")))?;
        let seq = pool.record.seq;
        let key = &pool.plan;
        let siblings = || self.pools.values().filter(|p| p.record.seq != seq && p.plan == *key);
        let empty = AddressSet::default();
        let taken = self.plans.get(key).map_or(&empty, |plan| &plan.taken);
        let avoid = |offset: u128| avoid(pool.ip_at(offset));
        let mut changes = Vec::with_capacity(2);
        let offset = match address {
            Some(ip) => {
                let offset = pool.check_named(ip)?;
                if taken.contains(offset) {
                    let holders: Vec<&Pool> = siblings().filter(|p| p.allocated.contains(offset)).collect();
                    // A gateway is the LAN's router: the networks of one subnet share it.
                    let shared_gateway = gateway && holders.iter().all(|p| p.gateways.contains(&offset));
                    if !shared_gateway {
                        let network = holders
                            .iter()
                            .find_map(|p| p.record.claimed_by.as_deref())
                            .map(|n| format!("network {}", crate::util::short_id(n)))
                            .unwrap_or_else(|| "another network".to_string());
                        return Err(Error::conflict(format!(
                            "address {ip} is already in use by {network} on the same subnet {} (networks with one \
                             subnet share one address plan; --ipam-opt segment=NAME keeps apart two L2 segments that \
                             reuse a subnet)",
                            pool.record.pool
                        )));
                    }
                }
                offset
            }
            None => {
                let found = if gateway {
                    // The gateway the plan's other networks have, or the first free one.
                    pool.shared_gateway(siblings()).or_else(|| {
                        let (lo, hi) = pool.dynamic_range();
                        first_free_avoiding(taken, &avoid, lo, hi)
                    })
                } else {
                    pool.next_dynamic(taken, &avoid, start)
                };
                let offset =
                    found.ok_or_else(|| Error::exhausted(format!("no free address left in {}", pool.describe())))?;
                if !gateway {
                    changes.push(IpamChange::SetCursor {
                        pool: seq,
                        ip: pool.ip_at(offset),
                    });
                }
                offset
            }
        };
        changes.insert(
            0,
            IpamChange::PutAddress {
                pool: seq,
                ip: pool.ip_at(offset),
                gateway,
            },
        );
        Ok((pool.cidr_at(offset), changes))
    }

    /// The highest free address of the pool's dynamic range (its ip-range, if it has
    /// one): for the host's own address, out of the way of the containers' addresses,
    /// which are handed out from the bottom.
    pub fn highest_free(&self, pool_id: &str) -> Result<IpAddr> {
        let pool = self
            .lookup(pool_id)?
            .ok_or_else(|| Error::not_found(format!("unknown pool ID {pool_id:?}")))?;
        let empty = AddressSet::default();
        let taken = self.plans.get(&pool.plan).map_or(&empty, |plan| &plan.taken);
        let (lo, hi) = pool.dynamic_range();
        (lo..=hi)
            .rev()
            .take(1 << 16)
            .find(|o| !taken.contains(*o))
            .map(|o| pool.ip_at(o))
            .ok_or_else(|| Error::exhausted(format!("no free address left in {}", pool.describe())))
    }

    /// Releasing an address that is not allocated, or of a pool that is gone, is not an
    /// error: dockerd repeats releases and sends them after crashes.
    pub fn plan_release_address(&self, pool_id: &str, ip: IpAddr) -> Result<Vec<IpamChange>> {
        let Some(pool) = self.lookup(pool_id)? else {
            return Ok(Vec::new());
        };
        let offset = pool
            .offset(ip)
            .ok_or_else(|| Error::invalid(format!("address {ip} is outside pool {}", pool.record.pool)))?;
        Ok(if pool.allocated.contains(offset) {
            vec![IpamChange::DelAddress {
                pool: pool.record.seq,
                ip,
            }]
        } else {
            Vec::new()
        })
    }

    /// Applies a change that was planned and persisted. Changes that do not fit (an
    /// address of a pool that is gone) are ignored: they cannot come from a plan.
    pub fn apply(&mut self, change: &IpamChange) {
        match change {
            IpamChange::PutPool(record) => {
                self.next_seq = self.next_seq.max(record.seq + 1);
                match self.pools.get_mut(&record.seq) {
                    Some(pool) => {
                        pool.plan = plan_key(record);
                        pool.record = record.clone();
                    }
                    None => {
                        self.pools.insert(record.seq, Pool::new(record.clone()));
                    }
                }
            }
            IpamChange::DelPool(seq) => {
                if let Some(pool) = self.pools.remove(seq)
                    && let Some(plan) = self.plans.get_mut(&pool.plan)
                {
                    for o in pool.allocated.iter() {
                        plan.remove(o);
                    }
                    if plan.taken.is_empty() {
                        self.plans.remove(&pool.plan);
                    }
                }
            }
            IpamChange::PutAddress { pool, ip, gateway } => {
                if let Some(p) = self.pools.get_mut(pool)
                    && let Some(o) = p.offset(*ip)
                {
                    if p.allocated.insert(o) {
                        match self.plans.get_mut(&p.plan) {
                            Some(plan) => plan.add(o),
                            None => {
                                let mut plan = Plan::default();
                                plan.add(o);
                                self.plans.insert(p.plan.clone(), plan);
                            }
                        }
                    }
                    if *gateway {
                        p.gateways.insert(o);
                    }
                }
            }
            IpamChange::DelAddress { pool, ip } => {
                if let Some(p) = self.pools.get_mut(pool)
                    && let Some(o) = p.offset(*ip)
                {
                    if p.allocated.remove(o)
                        && let Some(plan) = self.plans.get_mut(&p.plan)
                    {
                        plan.remove(o);
                        if plan.taken.is_empty() {
                            self.plans.remove(&p.plan);
                        }
                    }
                    p.gateways.remove(&o);
                }
            }
            IpamChange::SetCursor { pool, ip } => {
                if let Some(p) = self.pools.get_mut(pool) {
                    p.cursor = p.offset(*ip);
                }
            }
            IpamChange::SetNextPoolSeq(seq) => self.next_seq = self.next_seq.max(*seq),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> IpamConfig {
        IpamConfig {
            default_v4_range: "10.123.0.0/16".parse().unwrap(),
            default_v4_prefix: 24,
            default_v6_range: "fd12:3456:789a::/48".parse().unwrap(),
            default_v6_prefix: 64,
        }
    }

    fn commit(ipam: &mut Ipam, changes: &[IpamChange]) {
        for c in changes {
            ipam.apply(c);
        }
    }

    fn pool(ipam: &mut Ipam, cidr: &str, sub: &str) -> String {
        let req = PoolRequest {
            address_space: LOCAL_ADDRESS_SPACE.into(),
            pool: cidr.into(),
            sub_pool: sub.into(),
            family: if cidr.contains(':') { Family::V6 } else { Family::V4 },
            ..Default::default()
        };
        let (record, changes) = ipam.plan_request_pool(&req).unwrap();
        commit(ipam, &changes);
        pool_id(&record)
    }

    fn take(ipam: &mut Ipam, id: &str, ip: Option<&str>, gateway: bool) -> Result<String> {
        let ip = ip.map(|s| s.parse().unwrap());
        let (cidr, changes) = ipam.plan_request_address(id, ip, gateway)?;
        commit(ipam, &changes);
        Ok(cidr.to_string())
    }

    fn give_back(ipam: &mut Ipam, id: &str, ip: &str) {
        let changes = ipam.plan_release_address(id, ip.parse().unwrap()).unwrap();
        commit(ipam, &changes);
    }

    #[test]
    fn first_last_and_exhaustion_of_a_slash_24() {
        let mut ipam = Ipam::new(config());
        let id = pool(&mut ipam, "10.77.0.0/24", "");
        assert_eq!(
            take(&mut ipam, &id, None, true).unwrap(),
            "10.77.0.1/24",
            "gateway is the first usable"
        );
        assert_eq!(take(&mut ipam, &id, None, false).unwrap(), "10.77.0.2/24");
        for n in 3..=254 {
            assert_eq!(take(&mut ipam, &id, None, false).unwrap(), format!("10.77.0.{n}/24"));
        }
        let err = take(&mut ipam, &id, None, false).unwrap_err();
        assert_eq!(err.message, "no free address left in pool 10.77.0.0/24");
        assert_eq!(err.kind, crate::error::ErrorKind::Exhausted);
    }

    #[test]
    fn released_address_is_not_handed_straight_back() {
        let mut ipam = Ipam::new(config());
        let id = pool(&mut ipam, "10.77.0.0/29", "");
        assert_eq!(take(&mut ipam, &id, None, false).unwrap(), "10.77.0.1/29");
        assert_eq!(take(&mut ipam, &id, None, false).unwrap(), "10.77.0.2/29");
        give_back(&mut ipam, &id, "10.77.0.1");
        assert_eq!(take(&mut ipam, &id, None, false).unwrap(), "10.77.0.3/29");
        for n in 4..=6 {
            assert_eq!(take(&mut ipam, &id, None, false).unwrap(), format!("10.77.0.{n}/29"));
        }
        // .7 is broadcast: wrap around to the one free address, .1.
        assert_eq!(take(&mut ipam, &id, None, false).unwrap(), "10.77.0.1/29");
        assert!(take(&mut ipam, &id, None, false).is_err());
        give_back(&mut ipam, &id, "10.77.0.4");
        assert_eq!(take(&mut ipam, &id, None, false).unwrap(), "10.77.0.4/29");
    }

    #[test]
    fn named_addresses_are_checked() {
        let mut ipam = Ipam::new(config());
        let id = pool(&mut ipam, "10.77.1.0/24", "10.77.1.128/25");
        let msg = |r: Result<String>| r.unwrap_err().message;
        assert_eq!(
            msg(take(&mut ipam, &id, Some("10.77.2.1"), false)),
            "address 10.77.2.1 is outside pool 10.77.1.0/24"
        );
        assert_eq!(
            msg(take(&mut ipam, &id, Some("10.77.1.0"), false)),
            "address 10.77.1.0 is the network address of pool 10.77.1.0/24"
        );
        assert_eq!(
            msg(take(&mut ipam, &id, Some("10.77.1.255"), false)),
            "address 10.77.1.255 is the broadcast address of pool 10.77.1.0/24"
        );
        assert_eq!(
            msg(take(&mut ipam, &id, Some("fd00::1"), false)),
            "address fd00::1 is outside pool 10.77.1.0/24"
        );
        // Outside the ip-range but inside the subnet is allowed, as with Docker.
        assert_eq!(take(&mut ipam, &id, Some("10.77.1.5"), false).unwrap(), "10.77.1.5/24");
        assert_eq!(
            msg(take(&mut ipam, &id, Some("10.77.1.5"), false)),
            "address 10.77.1.5 is already in use in pool 10.77.1.0/24"
        );
    }

    #[test]
    fn sub_pool_bounds_dynamic_allocation_and_the_gateway() {
        let mut ipam = Ipam::new(config());
        let id = pool(&mut ipam, "10.77.1.0/24", "10.77.1.252/30");
        assert_eq!(take(&mut ipam, &id, None, true).unwrap(), "10.77.1.252/24");
        assert_eq!(take(&mut ipam, &id, None, false).unwrap(), "10.77.1.253/24");
        assert_eq!(take(&mut ipam, &id, None, false).unwrap(), "10.77.1.254/24");
        // .255 is the pool's broadcast address even though it is inside the range.
        let err = take(&mut ipam, &id, None, false).unwrap_err();
        assert_eq!(
            err.message,
            "no free address left in pool 10.77.1.0/24 (ip-range 10.77.1.252/30)"
        );
    }

    #[test]
    fn slash_16_last_address_and_ipv6_slash_64() {
        let mut ipam = Ipam::new(config());
        let id = pool(&mut ipam, "10.200.0.0/16", "");
        for _ in 0..65_533 {
            take(&mut ipam, &id, None, false).unwrap();
        }
        assert_eq!(take(&mut ipam, &id, None, false).unwrap(), "10.200.255.254/16");
        assert!(take(&mut ipam, &id, None, false).is_err());
        assert_eq!(ipam.pool(1).unwrap().allocated.range_count(), 1);

        let id6 = pool(&mut ipam, "fd00:77::/64", "");
        assert_eq!(take(&mut ipam, &id6, None, true).unwrap(), "fd00:77::1/64");
        assert_eq!(take(&mut ipam, &id6, None, false).unwrap(), "fd00:77::2/64");
        assert_eq!(
            take(&mut ipam, &id6, Some("fd00:77::ffff:ffff:ffff:ffff"), false).unwrap(),
            "fd00:77::ffff:ffff:ffff:ffff/64",
            "IPv6 has no broadcast address"
        );
        let err = take(&mut ipam, &id6, Some("fd00:77::"), false).unwrap_err();
        assert_eq!(
            err.message,
            "address fd00:77:: is the subnet-router anycast address of pool fd00:77::/64"
        );
    }

    #[test]
    fn small_ipv4_pools() {
        let mut ipam = Ipam::new(config());
        let id = pool(&mut ipam, "10.9.9.0/31", "");
        assert_eq!(take(&mut ipam, &id, None, false).unwrap(), "10.9.9.0/31");
        assert_eq!(take(&mut ipam, &id, None, false).unwrap(), "10.9.9.1/31");
        let id = pool(&mut ipam, "10.9.9.8/32", "");
        assert_eq!(take(&mut ipam, &id, None, false).unwrap(), "10.9.9.8/32");
    }

    #[test]
    fn pool_requests_are_validated() {
        let ipam = Ipam::new(config());
        let req = |pool: &str, sub: &str, family: Family, space: &str| PoolRequest {
            address_space: space.into(),
            pool: pool.into(),
            sub_pool: sub.into(),
            family,
            ..Default::default()
        };
        let msg = |r: PoolRequest| ipam.plan_request_pool(&r).unwrap_err().message;
        let local = LOCAL_ADDRESS_SPACE;
        assert_eq!(
            msg(req("10.0.0.0/24", "", Family::V4, "nope")),
            "unknown address space \"nope\"; rustvlan serves \"rustvlan-local\" and \"rustvlan-global\""
        );
        assert_eq!(
            msg(req("10.0.0.0/33", "", Family::V4, local)),
            "Pool \"10.0.0.0/33\" is not a subnet in CIDR notation"
        );
        assert_eq!(
            msg(req("10.0.0.1/24", "", Family::V4, local)),
            "Pool 10.0.0.1/24 has host bits set; the subnet is 10.0.0.0/24"
        );
        assert_eq!(
            msg(req("10.0.0.0/24", "", Family::V6, local)),
            "Pool 10.0.0.0/24 is an IPv4 subnet but V6 is true"
        );
        assert_eq!(
            msg(req("fd00::/64", "", Family::V4, local)),
            "Pool fd00::/64 is an IPv6 subnet but V6 is false"
        );
        assert_eq!(
            msg(req("10.0.0.0/24", "10.0.1.0/25", Family::V4, local)),
            "SubPool 10.0.1.0/25 (--ip-range) is not inside Pool 10.0.0.0/24"
        );
        assert_eq!(
            msg(req("10.0.0.0/24", "10.0.0.0/23", Family::V4, local)),
            "SubPool 10.0.0.0/23 (--ip-range) is not inside Pool 10.0.0.0/24"
        );
        assert_eq!(
            msg(req("", "10.0.0.0/25", Family::V4, local)),
            "SubPool 10.0.0.0/25 needs an explicit Pool (--ip-range needs --subnet)"
        );
        assert_eq!(
            msg(req("0.0.0.0/0", "", Family::V4, local)),
            "Pool 0.0.0.0/0 is too large: a /0 pool is not allowed"
        );
    }

    #[test]
    fn a_dhcp_pool_without_a_subnet_leaves_the_default_range_free() {
        let mut ipam = Ipam::new(config());
        let dhcp = PoolRequest {
            address_space: LOCAL_ADDRESS_SPACE.into(),
            family: Family::V4,
            dhcp: true,
            ..Default::default()
        };
        let (record, changes) = ipam.plan_request_pool(&dhcp).unwrap();
        commit(&mut ipam, &changes);
        assert_eq!(record.pool.to_string(), "0.0.0.0/0");
        assert_eq!(pool(&mut ipam, "", ""), "rustvlan-local/10.123.0.0/24#2");
        assert_eq!(pool(&mut ipam, "", ""), "rustvlan-local/10.123.1.0/24#3");
    }

    #[test]
    fn same_subnet_twice_gives_two_pools_and_default_pools_avoid_both() {
        let mut ipam = Ipam::new(config());
        let a = pool(&mut ipam, "10.123.0.0/24", "");
        let b = pool(&mut ipam, "10.123.0.0/24", "");
        assert_ne!(a, b);
        assert_eq!(a, "rustvlan-local/10.123.0.0/24#1");
        assert_eq!(take(&mut ipam, &a, Some("10.123.0.9"), false).unwrap(), "10.123.0.9/24");
        // Two pools, one address plan (see pools_of_one_subnet_share_one_address_plan).
        assert!(take(&mut ipam, &b, Some("10.123.0.9"), false).is_err());
        pool(&mut ipam, "10.123.2.0/23", "");
        let c = pool(&mut ipam, "", "");
        assert_eq!(c, "rustvlan-local/10.123.1.0/24#4");
        let d = pool(&mut ipam, "", "");
        assert_eq!(d, "rustvlan-local/10.123.4.0/24#5");
        let e = pool(&mut ipam, "", "").replace("#6", "");
        assert_eq!(e, "rustvlan-local/10.123.5.0/24");
        let v6 = PoolRequest {
            address_space: LOCAL_ADDRESS_SPACE.into(),
            family: Family::V6,
            ..Default::default()
        };
        let (record, changes) = ipam.plan_request_pool(&v6).unwrap();
        commit(&mut ipam, &changes);
        assert_eq!(record.pool.to_string(), "fd12:3456:789a::/64");
        let (record, _) = ipam.plan_request_pool(&v6).unwrap();
        assert_eq!(record.pool.to_string(), "fd12:3456:789a:1::/64");
    }

    #[test]
    fn default_range_exhaustion() {
        let mut cfg = config();
        cfg.default_v4_range = "10.1.0.0/23".parse().unwrap();
        let mut ipam = Ipam::new(cfg);
        pool(&mut ipam, "", "");
        pool(&mut ipam, "", "");
        let req = PoolRequest {
            address_space: LOCAL_ADDRESS_SPACE.into(),
            ..Default::default()
        };
        assert_eq!(
            ipam.plan_request_pool(&req).unwrap_err().message,
            "no free /24 left in the default IPv4 range 10.1.0.0/23; give --subnet explicitly"
        );
    }

    #[test]
    fn releases_are_idempotent_and_foreign_ids_refused() {
        let mut ipam = Ipam::new(config());
        let id = pool(&mut ipam, "10.77.0.0/24", "");
        take(&mut ipam, &id, Some("10.77.0.7"), false).unwrap();
        give_back(&mut ipam, &id, "10.77.0.7");
        give_back(&mut ipam, &id, "10.77.0.7");
        assert_eq!(ipam.pool(1).unwrap().allocated_count(), 0);
        assert!(
            ipam.plan_release_address("rustvlan-local/10.77.0.0/24#99", "10.77.0.7".parse().unwrap())
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            ipam.plan_release_address("LocalDefault/10.77.0.0/24", "10.77.0.7".parse().unwrap())
                .unwrap_err()
                .message,
            "pool ID \"LocalDefault/10.77.0.0/24\" was not issued by rustvlan"
        );
        assert_eq!(
            ipam.plan_request_address("rustvlan-local/10.77.0.0/24#99", None, false)
                .unwrap_err()
                .message,
            "unknown pool ID \"rustvlan-local/10.77.0.0/24#99\""
        );
        // A pool id whose seq exists but names another subnet is not that pool.
        assert!(ipam.lookup("rustvlan-local/10.99.0.0/24#1").unwrap().is_none());
        let changes = ipam.plan_release_pool(&id).unwrap();
        commit(&mut ipam, &changes);
        assert!(ipam.plan_release_pool(&id).unwrap().is_empty());
        assert!(ipam.pool(1).is_none());
    }

    fn pool_in_segment(ipam: &mut Ipam, cidr: &str, segment: &str) -> String {
        let req = PoolRequest {
            address_space: LOCAL_ADDRESS_SPACE.into(),
            pool: cidr.into(),
            options: [(SEGMENT_OPTION.to_string(), segment.to_string())].into(),
            family: Family::V4,
            ..Default::default()
        };
        let (record, changes) = ipam.plan_request_pool(&req).unwrap();
        commit(ipam, &changes);
        pool_id(&record)
    }

    /// moby's TestMacvlanIPAMOverlap: two networks of one subnet on two parents.
    #[test]
    fn pools_of_one_subnet_share_one_address_plan() {
        let mut ipam = Ipam::new(config());
        let a = pool(&mut ipam, "192.168.0.0/24", "");
        let b = pool(&mut ipam, "192.168.0.0/24", "");
        assert_eq!(take(&mut ipam, &a, None, true).unwrap(), "192.168.0.1/24");
        // The second network gets the same gateway, dynamically or by name.
        assert_eq!(take(&mut ipam, &b, None, true).unwrap(), "192.168.0.1/24");
        assert_eq!(take(&mut ipam, &a, None, false).unwrap(), "192.168.0.2/24");
        assert_eq!(take(&mut ipam, &b, None, false).unwrap(), "192.168.0.3/24");
        assert_eq!(take(&mut ipam, &a, None, false).unwrap(), "192.168.0.4/24");
        let err = take(&mut ipam, &b, Some("192.168.0.2"), false).unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::Conflict);
        assert!(
            err.message.starts_with(
                "address 192.168.0.2 is already in use by another network on the same subnet 192.168.0.0/24"
            ),
            "{}",
            err.message
        );
        // A container may not take the shared gateway.
        assert!(take(&mut ipam, &b, Some("192.168.0.1"), false).is_err());
        // One network's release frees the address for both; the shared gateway stays
        // taken while either network has it.
        give_back(&mut ipam, &a, "192.168.0.2");
        assert_eq!(
            take(&mut ipam, &b, Some("192.168.0.2"), false).unwrap(),
            "192.168.0.2/24"
        );
        give_back(&mut ipam, &a, "192.168.0.1");
        assert!(
            take(&mut ipam, &a, Some("192.168.0.1"), false).is_err(),
            "b still has it"
        );
        // Removing a pool gives its addresses back to the plan.
        let changes = ipam.plan_release_pool(&b).unwrap();
        commit(&mut ipam, &changes);
        assert_eq!(
            take(&mut ipam, &a, Some("192.168.0.1"), true).unwrap(),
            "192.168.0.1/24"
        );
        assert_eq!(
            take(&mut ipam, &a, Some("192.168.0.3"), false).unwrap(),
            "192.168.0.3/24"
        );
    }

    #[test]
    fn a_segment_keeps_apart_two_lans_that_reuse_a_subnet() {
        let mut ipam = Ipam::new(config());
        let a = pool_in_segment(&mut ipam, "192.168.0.0/24", "site-a");
        let b = pool_in_segment(&mut ipam, "192.168.0.0/24", "site-b");
        let c = pool(&mut ipam, "192.168.0.0/24", "");
        assert_eq!(take(&mut ipam, &a, None, false).unwrap(), "192.168.0.1/24");
        assert_eq!(take(&mut ipam, &b, None, false).unwrap(), "192.168.0.1/24");
        assert_eq!(take(&mut ipam, &c, None, false).unwrap(), "192.168.0.1/24");
    }

    #[test]
    fn pools_of_one_subnet_with_their_own_ip_ranges_never_collide() {
        let mut ipam = Ipam::new(config());
        let a = pool(&mut ipam, "10.5.0.0/24", "10.5.0.0/25");
        let b = pool(&mut ipam, "10.5.0.0/24", "");
        let mut seen = BTreeSet::new();
        while let Ok(cidr) = take(&mut ipam, &a, None, false) {
            assert!(seen.insert(cidr));
        }
        while let Ok(cidr) = take(&mut ipam, &b, None, false) {
            assert!(seen.insert(cidr), "handed out twice");
        }
        assert_eq!(seen.len(), 254, "the whole subnet, each address once");
    }
}
