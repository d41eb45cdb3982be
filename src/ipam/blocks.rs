//! Blocks of a shared plan: where a host goes on handing out addresses, so that hosts
//! rarely race for one. Pure decisions; [`crate::ipam::shared`] feeds them what it sees.
//!
//! Every address is still claimed on its own in etcd: blocks only steer hosts apart. A
//! host walks on through its own block, then straight into the next block if the block
//! it leaves is its alone. Anything else (it met another host's block, or another host
//! took part of its block) means another host walks the same way: following it block
//! after block, both would claim the same addresses at once and one would lose every
//! time. The host lands instead in the longest run of blocks nobody uses, at a point of
//! its own within it, away from the run's first block, which is left to whoever walks
//! into the run from below.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Addresses a block holds: 64, aligned (a /26 of IPv4, as Calico's blocks).
pub const BLOCK_BITS: u32 = 6;

/// Pools with more blocks than this (an IPv4 /12 and larger, IPv6) are not searched for
/// a free run: hosts start far apart in them, and the search would cost more than a race.
const MOST_BLOCKS_SEARCHED: u128 = 1 << 14;

pub fn block_of(ip: IpAddr) -> u128 {
    bits(ip) >> BLOCK_BITS
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The first and last address of `block`, in `like`'s family.
pub fn block_span(block: u128, like: IpAddr) -> (IpAddr, IpAddr) {
    let first = block << BLOCK_BITS;
    let last = first | ((1 << BLOCK_BITS) - 1);
    let at = |b: u128| match like {
        // A block of an IPv4 address is within the IPv4 space.
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(b as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(b)),
    };
    (at(first), at(last))
}

/// Whether a host that last picked `last` may take `next`: in the same block, or in the
/// block right after it when that block is the host's alone (`shared` says whether
/// another host holds an address of a block).
pub fn goes_on(last: IpAddr, next: IpAddr, shared: impl Fn(u128) -> bool) -> bool {
    let (from, to) = (block_of(last), block_of(next));
    to == from || (Some(to) == from.checked_add(1) && !shared(from))
}

/// The block to land in, among the blocks from `first` to `last` (a pool's dynamic
/// range): in the longest run of blocks `free` says nobody uses (the first such run of
/// that length), past the run's first block when it has more than one, at a point that
/// `salt` (different on every host) chooses. None when no block is free, or the pool is
/// too large to search.
pub fn landing_block(first: IpAddr, last: IpAddr, free: impl Fn(u128) -> bool, salt: u64) -> Option<u128> {
    let (lo, hi) = (block_of(first), block_of(last));
    if hi < lo || hi - lo >= MOST_BLOCKS_SEARCHED {
        return None;
    }
    let (start, len) = longest_run(lo, hi, free)?;
    Some(match len {
        1 => start,
        _ => start + 1 + u128::from(salt) % (len - 1),
    })
}

/// The first of the longest runs of `free` numbers from `lo` to `hi`: its start and length.
fn longest_run(lo: u128, hi: u128, free: impl Fn(u128) -> bool) -> Option<(u128, u128)> {
    let mut best: Option<(u128, u128)> = None;
    let mut run: Option<(u128, u128)> = None;
    for n in lo..=hi {
        run = free(n).then(|| run.map_or((n, 1), |(start, len)| (start, len + 1)));
        if let Some((start, len)) = run
            && best.is_none_or(|(_, longest)| len > longest)
        {
            best = Some((start, len));
        }
    }
    best
}

/// Pools with more addresses than this are not searched for a free gap.
const MOST_ADDRESSES_SEARCHED: u128 = 1 << 16;

/// Where to land once no block is free (the pool's last addresses, in blocks other hosts
/// are still filling from below): within the middle half of the longest run of addresses
/// `free` says nobody holds, at a point `salt` chooses, so that the host and the block's
/// owner meet once, not at every address, and hosts that land at once land apart. None
/// when none is free, or the pool is too large to search.
pub fn landing_in_gap(first: IpAddr, last: IpAddr, free: impl Fn(IpAddr) -> bool, salt: u64) -> Option<IpAddr> {
    let (lo, hi) = (bits(first), bits(last));
    if hi < lo || hi - lo >= MOST_ADDRESSES_SEARCHED {
        return None;
    }
    let at = |b: u128| match first {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(b as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(b)),
    };
    let (start, len) = longest_run(lo, hi, |b| free(at(b)))?;
    Some(at(start + len / 4 + u128::from(salt) % (len / 2).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_host_goes_on_only_from_a_block_of_its_own() {
        let alone = |_| false;
        assert!(goes_on(ip("10.0.0.5"), ip("10.0.0.9"), alone), "same block");
        assert!(
            goes_on(ip("10.0.0.63"), ip("10.0.0.64"), alone),
            "next block, from its own"
        );
        let shared_first = |b| b == block_of(ip("10.0.0.0"));
        assert!(
            !goes_on(ip("10.0.0.63"), ip("10.0.0.64"), shared_first),
            "another host has part of the block it leaves: it walks the same way"
        );
        assert!(
            !goes_on(ip("10.0.0.63"), ip("10.0.1.0"), alone),
            "it skipped a block: another host uses it"
        );
        assert!(!goes_on(ip("10.0.15.255"), ip("10.0.0.2"), alone), "wrapped around");
    }

    #[test]
    fn it_lands_inside_the_longest_free_run_past_its_first_block() {
        let (first, last) = (ip("10.0.0.1"), ip("10.0.15.254")); // blocks 0..=63 of a /20
        let base = block_of(first);
        // Blocks 0..=9 used, 10..=19 free, 20 used, 21..=50 free, 51..=63 used.
        let free = |b: u128| matches!(b - base, 10..=19 | 21..=50);
        for salt in 0..200 {
            let landed = landing_block(first, last, free, salt).unwrap() - base;
            assert!((22..=50).contains(&landed), "salt {salt}: landed in block {landed}");
        }
        let spots: std::collections::BTreeSet<u128> = (0..200)
            .map(|salt| landing_block(first, last, free, salt).unwrap())
            .collect();
        assert!(spots.len() > 20, "hosts land apart: {spots:?}");
    }

    #[test]
    fn a_lone_free_block_is_taken_and_none_is_none() {
        let (first, last) = (ip("10.0.0.1"), ip("10.0.0.254"));
        let base = block_of(first);
        assert_eq!(landing_block(first, last, |b| b - base == 2, 7), Some(base + 2));
        assert_eq!(landing_block(first, last, |_| false, 7), None);
    }

    #[test]
    fn huge_pools_are_not_searched() {
        assert_eq!(landing_block(ip("10.0.0.1"), ip("10.255.255.254"), |_| true, 1), None);
        assert_eq!(landing_block(ip("fd00::1"), ip("fd00::ffff:ffff"), |_| true, 1), None);
        assert!(landing_block(ip("10.0.0.1"), ip("10.0.255.254"), |_| true, 1).is_some());
    }

    #[test]
    fn with_no_free_block_it_lands_in_the_middle_of_the_longest_gap() {
        let (first, last) = (ip("10.0.0.1"), ip("10.0.0.254"));
        let free = |a: IpAddr| matches!(bits(a) & 0xff, 10..=19 | 100..=139 | 200..=210);
        let spots: std::collections::BTreeSet<u128> = (0..100)
            .map(|salt| bits(landing_in_gap(first, last, free, salt).unwrap()) & 0xff)
            .collect();
        assert_eq!(spots, (110..=129).collect(), "the middle half of 100..=139");
        assert_eq!(
            landing_in_gap(first, last, |a| bits(a) & 0xff == 7, 5),
            Some(ip("10.0.0.7"))
        );
        assert_eq!(landing_in_gap(first, last, |_| false, 5), None);
        assert_eq!(landing_in_gap(ip("10.0.0.1"), ip("10.255.255.254"), |_| true, 5), None);
    }

    #[test]
    fn spans_are_aligned_blocks() {
        assert_eq!(
            block_span(block_of(ip("10.0.0.70")), ip("10.0.0.70")),
            (ip("10.0.0.64"), ip("10.0.0.127"))
        );
        assert_eq!(
            block_span(block_of(ip("fd00::41")), ip("fd00::41")),
            (ip("fd00::40"), ip("fd00::7f"))
        );
    }
}
