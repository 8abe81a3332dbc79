//! Typed handles to the program's maps, taken from a freshly loaded program or opened from the
//! pins of a running one, and the operations the controller performs on them.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
    Ebpf,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use smtp_xdp_common::{
    clock_slot, names, port_flags, present, select, Ban, BounceState, Counter, Meta, Policy,
    PortStats, SourceKey, SourceState, Trust, UserCounter, FAMILY_V4, FAMILY_V6, MAX_IPV6_PREFIX,
    MAX_PORTS,
};
use thiserror::Error;

use crate::clock;

#[derive(Debug, Error)]
pub enum MapsError {
    #[error("map {name}: {error}")]
    Map { name: &'static str, error: MapError },
    #[error("map {0} is missing from the program")]
    Missing(&'static str),
    #[error("cannot open pinned map {path}: {error}")]
    Pin { path: String, error: MapError },
    #[error("cannot count CPUs: {0}")]
    Cpus(String),
    #[error("{list} list is full ({entries} entries)")]
    ListFull { list: &'static str, entries: usize },
    #[error("cannot map {name} into memory: {error}")]
    Mmap {
        name: &'static str,
        error: std::io::Error,
    },
    #[error("cannot find the port table of the program behind {link}: {why}")]
    PortTable { link: String, why: String },
}

type Result<T> = std::result::Result<T, MapsError>;

/// `bpf_map_update_elem` flags (uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map {
        name,
        error: source,
    }
}

/// Which list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    Allow,
    Deny,
}

impl List {
    pub fn name(self) -> &'static str {
        match self {
            List::Allow => "allow",
            List::Deny => "deny",
        }
    }

    fn select_index(self) -> u32 {
        match self {
            List::Allow => select::ALLOW,
            List::Deny => select::DENY,
        }
    }

    fn present_bit(self) -> u32 {
        match self {
            List::Allow => present::ALLOW,
            List::Deny => present::DENY,
        }
    }
}

/// One copy (A or B) of a list: its IPv4 and IPv6 tries.
pub struct ListCopy {
    pub v4: LpmTrie<MapData, [u8; 4], u32>,
    pub v6: LpmTrie<MapData, [u8; 16], u32>,
}

/// `BAN_FILTER`, memory-mapped: per slot, an upper bound of the `BANS` keys hashing there
/// (the protocol is in [`smtp_xdp_common::BAN_FILTER_SLOTS`]). Updated with atomic adds, as
/// the kernel does, so no writer's count is lost.
pub struct BanFilter {
    /// Keeps the map (and so the mapping's object) alive.
    _map: Array<MapData, u64>,
    slots: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for BanFilter {}
// SAFETY: as above.
unsafe impl Sync for BanFilter {}

impl BanFilter {
    fn new(map: Array<MapData, u64>) -> Result<Self> {
        use aya::maps::IterableMap as _;
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let len = smtp_xdp_common::BAN_FILTER_SLOTS as usize * std::mem::size_of::<u64>();
        let fd = map.map().fd().as_fd().as_raw_fd();
        // SAFETY: a shared read-write mapping of a BPF_F_MMAPABLE array of `len` bytes (u64
        // values are stored without padding); checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        let slots = match std::ptr::NonNull::new(p.cast()) {
            Some(s) if p != libc::MAP_FAILED => s,
            _ => {
                return Err(MapsError::Mmap {
                    name: names::BAN_FILTER,
                    error: std::io::Error::last_os_error(),
                })
            }
        };
        Ok(BanFilter {
            _map: map,
            slots,
            len,
        })
    }

    fn slot(&self, key: &SourceKey) -> &std::sync::atomic::AtomicU64 {
        let i = smtp_xdp_common::ban_filter_slot(key) as usize;
        // SAFETY: `i` < BAN_FILTER_SLOTS, inside the mapping, which lives as long as `self`.
        unsafe { &*self.slots.as_ptr().add(i) }
    }

    fn add(&self, key: &SourceKey) {
        self.slot(key)
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn sub(&self, key: &SourceKey) {
        self.slot(key)
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The count of `key`'s slot.
    pub fn count(&self, key: &SourceKey) -> u64 {
        self.slot(key).load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for BanFilter {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.len) };
    }
}

/// All maps of one program instance.
pub struct Maps {
    pub policy: Array<MapData, Policy>,
    pub select: Array<MapData, u32>,
    port_table: PortTableAt,
    pub sources: HashMap<MapData, SourceKey, SourceState>,
    /// Bounce state of the sources that sent bounces.
    pub bouncers: HashMap<MapData, SourceKey, BounceState>,
    pub bans: HashMap<MapData, SourceKey, Ban>,
    pub ban_filter: BanFilter,
    pub allow: [ListCopy; 2],
    pub deny: [ListCopy; 2],
    pub banned_nets_v4: LpmTrie<MapData, [u8; 4], Ban>,
    pub banned_nets_v6: LpmTrie<MapData, [u8; 16], Ban>,
    /// CrowdSec decisions, apart from the local penalty box.
    pub crowdsec_v4: LpmTrie<MapData, [u8; 4], Ban>,
    pub crowdsec_v6: LpmTrie<MapData, [u8; 16], Ban>,
    pub counters: PerCpuArray<MapData, u64>,
    pub user_counters: Array<MapData, u64>,
    pub port_stats: PerCpuArray<MapData, PortStats>,
    pub global_guard: Array<MapData, u64>,
    pub storm: Array<MapData, u32>,
    pub meta: Array<MapData, Meta>,
    pub trusted: HashMap<MapData, SourceKey, Trust>,
    /// How the program reads the boot clock (`smtp_xdp_common::clock_slot`).
    pub clock: Array<MapData, u64>,
}

/// The program's port table (`port_flags`): one array value of a byte per port.
type PortTable = [u8; port_flags::TABLE_LEN];

/// The name of the program's global data, where its port table lives.
const GLOBAL_DATA: &str = ".bss";

/// Where the port table of the program in force is. It is the program's own global data, not a
/// pinned map: every loaded program has its own, written from the live policy before it is
/// attached (so a restart or an upgrade never runs a program with an empty table).
enum PortTableAt {
    /// A program this process loaded (attached by it, or not attached at all).
    Loaded(Array<MapData, PortTable>),
    /// Whatever program the instance's pinned link runs, looked up when the table is written;
    /// none when nothing is attached (the next start writes its program's table).
    Link(PathBuf),
}

impl PortTableAt {
    fn open(&mut self) -> Result<Option<Array<MapData, PortTable>>> {
        let link = match self {
            PortTableAt::Loaded(_) => return Ok(None),
            PortTableAt::Link(link) => link,
        };
        if !link.exists() {
            return Ok(None);
        }
        let fail = |why: String| MapsError::PortTable {
            link: link.display().to_string(),
            why,
        };
        let info = aya::programs::links::FdLink::from(
            aya::programs::links::PinnedLink::from_pin(&*link).map_err(|e| fail(e.to_string()))?,
        )
        .info()
        .map_err(|e| fail(e.to_string()))?;
        let program = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .find(|p| p.id() == info.program_id())
            .ok_or_else(|| fail(format!("program {} is gone", info.program_id())))?;
        let ids = program
            .map_ids()
            .map_err(|e| fail(e.to_string()))?
            .unwrap_or_default();
        for id in ids {
            let Ok(data) = MapData::from_id(id) else {
                continue;
            };
            if data
                .info()
                .ok()
                .and_then(|i| i.name_as_str().map(|n| n == GLOBAL_DATA))
                == Some(true)
            {
                let map = Map::from_map_data(data).map_err(|e| fail(e.to_string()))?;
                return Array::try_from(map)
                    .map(Some)
                    .map_err(|e| fail(e.to_string()));
            }
        }
        Err(fail(format!(
            "program {} has no {GLOBAL_DATA}: an older build",
            info.program_id()
        )))
    }

    /// Writes the whole table. A byte per port: a reader sees each port's old or new entry.
    fn write(&mut self, table: &PortTable) -> Result<()> {
        let mut opened = self.open()?;
        let map = match (self, opened.as_mut()) {
            (PortTableAt::Loaded(map), _) => map,
            (PortTableAt::Link(_), Some(map)) => map,
            (PortTableAt::Link(_), None) => return Ok(()),
        };
        map.set(0, table, 0).map_err(map_err(GLOBAL_DATA))
    }
}

/// The port table of `ports` (by slot).
fn port_table(ports: &[u16; MAX_PORTS]) -> Box<PortTable> {
    let mut table: Box<PortTable> = vec![0u8; port_flags::TABLE_LEN]
        .into_boxed_slice()
        .try_into()
        .unwrap_or_else(|_| unreachable!("the length is TABLE_LEN"));
    for (slot, &port) in ports.iter().enumerate() {
        if port != 0 {
            table[port as usize] = port_flags::entry(slot, port);
        }
    }
    table
}

/// Where maps come from: a loaded program or a pin directory.
trait Source {
    fn map(&mut self, name: &'static str) -> Result<Map>;
    fn port_table(&mut self) -> Result<PortTableAt>;
}

impl Source for Ebpf {
    fn map(&mut self, name: &'static str) -> Result<Map> {
        self.take_map(name).ok_or(MapsError::Missing(name))
    }

    fn port_table(&mut self) -> Result<PortTableAt> {
        Ok(PortTableAt::Loaded(take(self, GLOBAL_DATA)?))
    }
}

impl Source for &Path {
    fn map(&mut self, name: &'static str) -> Result<Map> {
        let path = self.join(name);
        let data = MapData::from_pin(&path).map_err(|source| MapsError::Pin {
            path: path.display().to_string(),
            error: source,
        })?;
        Map::from_map_data(data).map_err(map_err(name))
    }

    fn port_table(&mut self) -> Result<PortTableAt> {
        Ok(PortTableAt::Link(self.join(crate::pins::LINK)))
    }
}

fn take<S: Source, T>(src: &mut S, name: &'static str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(src.map(name)?).map_err(map_err(name))
}

impl Maps {
    /// Takes the maps out of a loaded program (the program keeps its own references).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Self::from_source(ebpf)
    }

    /// Opens the maps pinned in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut d = dir;
        Self::from_source(&mut d)
    }

    fn from_source<S: Source>(s: &mut S) -> Result<Self> {
        Ok(Maps {
            policy: take(s, names::POLICY)?,
            select: take(s, names::SELECT)?,
            port_table: s.port_table()?,
            sources: take(s, names::SOURCES)?,
            bouncers: take(s, names::BOUNCERS)?,
            bans: take(s, names::BANS)?,
            ban_filter: BanFilter::new(take(s, names::BAN_FILTER)?)?,
            allow: [
                ListCopy {
                    v4: take(s, names::ALLOW_V4_A)?,
                    v6: take(s, names::ALLOW_V6_A)?,
                },
                ListCopy {
                    v4: take(s, names::ALLOW_V4_B)?,
                    v6: take(s, names::ALLOW_V6_B)?,
                },
            ],
            deny: [
                ListCopy {
                    v4: take(s, names::DENY_V4_A)?,
                    v6: take(s, names::DENY_V6_A)?,
                },
                ListCopy {
                    v4: take(s, names::DENY_V4_B)?,
                    v6: take(s, names::DENY_V6_B)?,
                },
            ],
            banned_nets_v4: take(s, names::BANNED_NETS_V4)?,
            banned_nets_v6: take(s, names::BANNED_NETS_V6)?,
            crowdsec_v4: take(s, names::CROWDSEC_V4)?,
            crowdsec_v6: take(s, names::CROWDSEC_V6)?,
            counters: take(s, names::COUNTERS)?,
            user_counters: take(s, names::USER_COUNTERS)?,
            port_stats: take(s, names::PORT_STATS)?,
            global_guard: take(s, names::GLOBAL_GUARD)?,
            storm: take(s, names::STORM)?,
            meta: take(s, names::META)?,
            trusted: take(s, names::TRUSTED)?,
            clock: take(s, names::CLOCK)?,
        })
    }

    fn live(&self, index: u32) -> Result<usize> {
        Ok(
            match self.select.get(&index, 0).map_err(map_err(names::SELECT))? {
                1 => 1,
                _ => 0,
            },
        )
    }

    // --- policy ------------------------------------------------------------------------------

    /// The policy in force, or `None` before a controller wrote one.
    pub fn policy(&self) -> Result<Option<Policy>> {
        let p = self
            .policy
            .get(&(self.live(select::POLICY)? as u32), 0)
            .map_err(map_err(names::POLICY))?;
        Ok((p.syn.interval_ns != 0).then_some(p))
    }

    /// Replaces the policy: writes the idle copy, then flips the selector, so the kernel sees the
    /// old or the new policy whole. Ports are re-slotted keeping existing ports' slots (and their
    /// counters); a removed port's slot and counters are cleared.
    pub fn set_policy(&mut self, new: &Policy) -> Result<()> {
        let old_ports = self.policy()?.map(|p| p.ports).unwrap_or([0; MAX_PORTS]);
        let mut policy = *new;
        policy.ports = reslot(&old_ports, &new.ports);
        let idle = 1 - self.live(select::POLICY)?;
        self.policy
            .set(idle as u32, policy, 0)
            .map_err(map_err(names::POLICY))?;
        // Protect new ports before the policy naming them goes live; unprotect removed ones after.
        let table = port_table(&policy.ports);
        let removed = old_ports
            .iter()
            .any(|&p| p != 0 && !policy.ports.contains(&p));
        if removed {
            let mut both = port_table(&old_ports);
            for (port, &entry) in table.iter().enumerate() {
                if entry != 0 {
                    both[port] = entry;
                }
            }
            self.port_table.write(&both)?;
        } else {
            self.port_table.write(&table)?;
        }
        self.select
            .set(select::POLICY, idle as u32, 0)
            .map_err(map_err(names::SELECT))?;
        if removed {
            self.port_table.write(&table)?;
        }
        for (slot, &port) in old_ports.iter().enumerate() {
            if port != 0 && policy.ports[slot] != port {
                self.clear_port_slot(slot as u32)?;
            }
        }
        Ok(())
    }

    /// Rewrites the port table of the program in force from the live policy: after a program
    /// swap, in case the policy changed between the new program's `set_policy` and the swap.
    pub fn refresh_port_table(&mut self) -> Result<()> {
        let ports = self.policy()?.map(|p| p.ports).unwrap_or([0; MAX_PORTS]);
        self.port_table.write(&port_table(&ports))
    }

    fn clear_port_slot(&mut self, slot: u32) -> Result<()> {
        let cpus =
            aya::util::nr_cpus().map_err(|(what, e)| MapsError::Cpus(format!("{what}: {e}")))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![PortStats::default(); cpus])
            .map_err(|e| MapsError::Cpus(e.to_string()))?;
        self.port_stats
            .set(slot, zeros, 0)
            .map_err(map_err(names::PORT_STATS))?;
        self.global_guard
            .set(slot, 0, 0)
            .map_err(map_err(names::GLOBAL_GUARD))
    }

    // --- counters ----------------------------------------------------------------------------

    /// Every kernel counter summed over CPUs.
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize]> {
        let mut out = [0u64; Counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .get(&(i as u32), 0)
                .map_err(map_err(names::COUNTERS))?;
            *slot = per_cpu.iter().copied().fold(0u64, u64::wrapping_add);
        }
        Ok(out)
    }

    pub fn user_counter(&self, c: UserCounter) -> Result<u64> {
        self.user_counters
            .get(&(c as u32), 0)
            .map_err(map_err(names::USER_COUNTERS))
    }

    /// Sets a controller-kept value (a gauge such as the census count).
    pub fn set_user_counter(&mut self, c: UserCounter, v: u64) -> Result<()> {
        self.user_counters
            .set(c as u32, v, 0)
            .map_err(map_err(names::USER_COUNTERS))
    }

    pub fn add_user_counter(&mut self, c: UserCounter, n: u64) -> Result<()> {
        let v = self.user_counter(c)?;
        self.user_counters
            .set(c as u32, v.wrapping_add(n), 0)
            .map_err(map_err(names::USER_COUNTERS))
    }

    /// Per-port SYN counters summed over CPUs, for the ports in `policy`.
    pub fn port_stats(&self, policy: &Policy) -> Result<Vec<(u16, PortStats)>> {
        let mut out = Vec::new();
        for (slot, &port) in policy.ports.iter().enumerate() {
            if port == 0 {
                continue;
            }
            let per_cpu = self
                .port_stats
                .get(&(slot as u32), 0)
                .map_err(map_err(names::PORT_STATS))?;
            let mut sum = PortStats::default();
            for s in per_cpu.iter() {
                sum.syn_admitted += s.syn_admitted;
                sum.syn_dropped += s.syn_dropped;
                sum.syn_would_drop += s.syn_would_drop;
            }
            out.push((port, sum));
        }
        Ok(out)
    }

    pub fn storm(&self) -> Result<bool> {
        Ok(self.storm.get(&0, 0).map_err(map_err(names::STORM))? != 0)
    }

    pub fn set_storm(&mut self, on: bool) -> Result<()> {
        self.storm
            .set(0, on as u32, 0)
            .map_err(map_err(names::STORM))
    }

    pub fn meta(&self) -> Result<Meta> {
        self.meta.get(&0, 0).map_err(map_err(names::META))
    }

    pub fn set_meta(&mut self, meta: &Meta) -> Result<()> {
        self.meta.set(0, *meta, 0).map_err(map_err(names::META))
    }

    // --- the kernel's clock -------------------------------------------------------------------

    /// Publishes how long the machine has been suspended ([`clock::suspended_ns`]), which the
    /// program adds to its monotonic clock (jiffies or coarse) to read the boot clock. Whoever
    /// sets up the maps calls it (through [`crate::program::calibrate_clock`]) before the first
    /// verdict, and the sweeps after every resume; until then the program's clock only trails,
    /// which makes every decision stricter, never laxer.
    pub fn publish_clock(&mut self) -> Result<()> {
        let suspended = clock::suspended_ns();
        self.set_clock_word(clock_slot::SUSPENDED, suspended)?;
        if self.clock_word(clock_slot::NS_PER_JIFFY)? != 0 {
            let epoch = self.clock_word(clock_slot::JIFFY_EPOCH)?;
            self.set_clock_word(clock_slot::JIFFY_BASE, epoch.wrapping_add(suspended))?;
        }
        Ok(())
    }

    /// Switches the program to the jiffies clock: `epoch` is CLOCK_MONOTONIC at jiffy 0 and
    /// `ns_per_jiffy` the tick. The base goes in before the scale, so no verdict reads one
    /// without the other.
    pub fn set_jiffies_clock(&mut self, epoch: u64, ns_per_jiffy: u64) -> Result<()> {
        let suspended = clock::suspended_ns();
        self.set_clock_word(clock_slot::SUSPENDED, suspended)?;
        self.set_clock_word(clock_slot::JIFFY_EPOCH, epoch)?;
        self.set_clock_word(clock_slot::JIFFY_BASE, epoch.wrapping_add(suspended))?;
        self.set_clock_word(clock_slot::NS_PER_JIFFY, ns_per_jiffy)
    }

    /// Back to the coarse clock (calibration failed): the scale goes to 0 first.
    pub fn set_coarse_clock(&mut self) -> Result<()> {
        self.set_clock_word(clock_slot::NS_PER_JIFFY, 0)?;
        self.publish_clock()
    }

    /// The sampler program's last sample: coarse clock, jiffies, coarse clock.
    pub fn clock_sample(&self) -> Result<[u64; 3]> {
        let at = clock_slot::SAMPLE;
        Ok([
            self.clock_word(at)?,
            self.clock_word(at + 1)?,
            self.clock_word(at + 2)?,
        ])
    }

    /// One slot of `CLOCK` (`smtp_xdp_common::clock_slot`).
    pub fn clock_word(&self, slot: u32) -> Result<u64> {
        self.clock.get(&slot, 0).map_err(map_err(names::CLOCK))
    }

    fn set_clock_word(&mut self, slot: u32, value: u64) -> Result<()> {
        self.clock
            .set(slot, value, 0)
            .map_err(map_err(names::CLOCK))
    }

    // --- which tries hold entries -------------------------------------------------------------

    /// The `present` bits the kernel reads to skip empty tries.
    pub fn present(&self) -> Result<u32> {
        self.select
            .get(&select::PRESENT, 0)
            .map_err(map_err(names::SELECT))
    }

    fn set_present(&mut self, bit: u32, on: bool) -> Result<()> {
        let cur = self.present()?;
        let new = if on { cur | bit } else { cur & !bit };
        if new != cur {
            self.select
                .set(select::PRESENT, new, 0)
                .map_err(map_err(names::SELECT))?;
        }
        Ok(())
    }

    /// Clears `bit` when both tries are empty (after a removal).
    fn refresh_present(&mut self, bit: u32, empty: bool) -> Result<()> {
        if empty {
            self.set_present(bit, false)?;
        }
        Ok(())
    }

    fn list_empty(&self, list: List, copy: usize) -> bool {
        let c = self.list_copy(list, copy);
        c.v4.keys().next().is_none() && c.v6.keys().next().is_none()
    }

    fn banned_nets_empty(&self) -> bool {
        self.banned_nets_v4.keys().next().is_none() && self.banned_nets_v6.keys().next().is_none()
    }

    // --- lists -------------------------------------------------------------------------------

    fn list_copy(&self, list: List, copy: usize) -> &ListCopy {
        match list {
            List::Allow => &self.allow[copy],
            List::Deny => &self.deny[copy],
        }
    }

    fn list_copy_mut(&mut self, list: List, copy: usize) -> &mut ListCopy {
        match list {
            List::Allow => &mut self.allow[copy],
            List::Deny => &mut self.deny[copy],
        }
    }

    /// The entries of the live copy of `list`, sorted.
    pub fn list_entries(&self, list: List) -> Result<Vec<IpNet>> {
        let live = self.live(list.select_index())?;
        let copy = self.list_copy(list, live);
        let mut out = BTreeSet::new();
        for k in copy.v4.keys() {
            let k = k.map_err(map_err("list"))?;
            out.insert(v4_net(k.data(), k.prefix_len()));
        }
        for k in copy.v6.keys() {
            let k = k.map_err(map_err("list"))?;
            out.insert(v6_net(k.data(), k.prefix_len()));
        }
        Ok(out.into_iter().collect())
    }

    /// Adds (or removes) one entry in the live copy: a single map update, atomic by itself.
    /// Writers hold the lists lock (`pins::lists_lock`) so the `present` bits stay exact.
    pub fn list_edit(&mut self, list: List, net: &IpNet, add: bool) -> Result<bool> {
        let live = self.live(list.select_index())?;
        if add {
            self.set_present(list.present_bit(), true)?;
        }
        let copy = self.list_copy_mut(list, live);
        let r = match net {
            IpNet::V4(n) => {
                let key = Key::new(n.prefix_len() as u32, n.network().octets());
                if add {
                    copy.v4.insert(&key, 1, 0).map(|_| true)
                } else {
                    remove_existing(copy.v4.remove(&key))
                }
            }
            IpNet::V6(n) => {
                let key = Key::new(n.prefix_len() as u32, n.network().octets());
                if add {
                    copy.v6.insert(&key, 1, 0).map(|_| true)
                } else {
                    remove_existing(copy.v6.remove(&key))
                }
            }
        };
        let changed = r.map_err(|e| list_full(list, e))?;
        if !add {
            let empty = self.list_empty(list, live);
            self.refresh_present(list.present_bit(), empty)?;
        }
        Ok(changed)
    }

    /// Replaces `list` with `entries` as a whole: fills the idle copy, then flips the selector.
    /// Killed half-way, the live copy is untouched; the next replace clears the idle one first.
    pub fn list_replace(&mut self, list: List, entries: &[IpNet]) -> Result<()> {
        let idle = 1 - self.live(list.select_index())?;
        self.list_clear(list, idle)?;
        let copy = self.list_copy_mut(list, idle);
        for net in entries {
            match net {
                IpNet::V4(n) => copy
                    .v4
                    .insert(&Key::new(n.prefix_len() as u32, n.network().octets()), 1, 0)
                    .map_err(|e| list_full(list, e))?,
                IpNet::V6(n) => copy
                    .v6
                    .insert(&Key::new(n.prefix_len() as u32, n.network().octets()), 1, 0)
                    .map_err(|e| list_full(list, e))?,
            }
        }
        if !entries.is_empty() {
            self.set_present(list.present_bit(), true)?;
        }
        self.select
            .set(list.select_index(), idle as u32, 0)
            .map_err(map_err(names::SELECT))?;
        self.refresh_present(list.present_bit(), entries.is_empty())?;
        // The old copy is idle now; empty it to give its memory back.
        self.list_clear(list, 1 - idle)
    }

    fn list_clear(&mut self, list: List, copy: usize) -> Result<()> {
        let c = self.list_copy_mut(list, copy);
        let keys4: Vec<_> = c.v4.keys().filter_map(|k| k.ok()).collect();
        for k in keys4 {
            remove_existing(c.v4.remove(&k)).map_err(map_err("list"))?;
        }
        let keys6: Vec<_> = c.v6.keys().filter_map(|k| k.ok()).collect();
        for k in keys6 {
            remove_existing(c.v6.remove(&k)).map_err(map_err("list"))?;
        }
        Ok(())
    }

    // --- bans --------------------------------------------------------------------------------

    /// Every penalty-box entry: per-source bans and manual network bans.
    pub fn ban_entries(&self) -> Result<Vec<BanEntry>> {
        let mut out = Vec::new();
        for item in self.bans.iter() {
            let (key, ban) = item.map_err(map_err(names::BANS))?;
            out.push(BanEntry {
                target: BanTarget::Source(key),
                ban,
            });
        }
        for item in self.banned_nets_v4.iter() {
            let (key, ban) = item.map_err(map_err(names::BANNED_NETS_V4))?;
            out.push(BanEntry {
                target: BanTarget::Net(v4_net(key.data(), key.prefix_len())),
                ban,
            });
        }
        for item in self.banned_nets_v6.iter() {
            let (key, ban) = item.map_err(map_err(names::BANNED_NETS_V6))?;
            out.push(BanEntry {
                target: BanTarget::Net(v6_net(key.data(), key.prefix_len())),
                ban,
            });
        }
        Ok(out)
    }

    /// Bans a network (or single address) by hand until `ban.until`.
    pub fn ban_net(&mut self, net: &IpNet, ban: &Ban) -> Result<()> {
        self.set_present(present::BANNED_NETS, true)?;
        match net {
            IpNet::V4(n) => self.banned_nets_v4.insert(
                &Key::new(n.prefix_len() as u32, n.network().octets()),
                ban,
                0,
            ),
            IpNet::V6(n) => self.banned_nets_v6.insert(
                &Key::new(n.prefix_len() as u32, n.network().octets()),
                ban,
                0,
            ),
        }
        .map_err(map_err(names::BANNED_NETS_V4))
    }

    /// Removes a manual network ban with exactly this prefix; true if there was one.
    pub fn unban_net(&mut self, net: &IpNet) -> Result<bool> {
        let removed = self.remove_net_ban(net)?;
        let empty = self.banned_nets_empty();
        self.refresh_present(present::BANNED_NETS, empty)?;
        Ok(removed)
    }

    fn remove_net_ban(&mut self, net: &IpNet) -> Result<bool> {
        match net {
            IpNet::V4(n) => remove_existing(
                self.banned_nets_v4
                    .remove(&Key::new(n.prefix_len() as u32, n.network().octets())),
            ),
            IpNet::V6(n) => remove_existing(
                self.banned_nets_v6
                    .remove(&Key::new(n.prefix_len() as u32, n.network().octets())),
            ),
        }
        .map_err(map_err(names::BANNED_NETS_V4))
    }

    /// Stores a per-source ban, keeping `BAN_FILTER` an upper bound of the keys per slot.
    pub fn ban_source(&mut self, key: &SourceKey, ban: &Ban) -> Result<()> {
        let errno = |e: &MapError| match e {
            MapError::SyscallError(s) => s.io_error.raw_os_error(),
            _ => None,
        };
        loop {
            self.ban_filter.add(key);
            match self.bans.insert(key, ban, BPF_NOEXIST) {
                Ok(()) => return Ok(()),
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => {
                    self.ban_filter.sub(key);
                    return Err(map_err(names::BANS)(e));
                }
            }
            // The key was there: its count is its inserter's. Replace it, unless it vanished
            // meanwhile (then start over).
            self.ban_filter.sub(key);
            match self.bans.insert(key, ban, BPF_EXIST) {
                Ok(()) => return Ok(()),
                Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err(names::BANS)(e)),
            }
        }
    }

    pub fn unban_source(&mut self, key: &SourceKey) -> Result<bool> {
        let removed = remove_existing(self.bans.remove(key)).map_err(map_err(names::BANS))?;
        if removed {
            self.ban_filter.sub(key);
        }
        Ok(removed)
    }

    /// Removes bans that are over (under the lists lock, like every writer of the tries):
    /// manual network bans at expiry, per-source bans once their
    /// escalation memory ran out too (or at expiry when the map is filling up). Returns how many.
    pub fn sweep_bans(&mut self, now: u64, memory_ns: u64, capacity: u32) -> Result<u64> {
        let mut removed = 0;
        let entries = self.ban_entries()?;
        let per_source = entries
            .iter()
            .filter(|e| matches!(e.target, BanTarget::Source(_)))
            .count();
        // Past three quarters full, expired entries go at once: new bans matter more than the
        // escalation history of old ones.
        let pressed = per_source as u64 * 4 > capacity as u64 * 3;
        for e in entries {
            let over = match e.target {
                BanTarget::Net(_) => !smtp_xdp_common::bans::is_active(&e.ban, now),
                BanTarget::Source(_) => {
                    smtp_xdp_common::bans::is_forgotten(&e.ban, now, memory_ns)
                        || (pressed && !smtp_xdp_common::bans::is_active(&e.ban, now))
                }
            };
            if !over {
                continue;
            }
            let gone = match &e.target {
                BanTarget::Net(n) => self.remove_net_ban(n)?,
                BanTarget::Source(k) => self.unban_source(k)?,
            };
            removed += gone as u64;
        }
        let empty = self.banned_nets_empty();
        self.refresh_present(present::BANNED_NETS, empty)?;
        Ok(removed)
    }

    /// Removes every would-ban (monitor mode's record of what it would have banned). Returns
    /// how many. Writers hold the lists lock.
    pub fn clear_would_bans(&mut self) -> Result<u64> {
        let mut removed = 0;
        let keys: Vec<SourceKey> = self
            .bans
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, b)| b.flags & smtp_xdp_common::ban_flags::WOULD != 0)
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            removed += self.unban_source(&k)? as u64;
        }
        Ok(removed)
    }

    // --- CrowdSec decisions ---------------------------------------------------------------------

    /// Every CrowdSec decision the kernel holds (active or expired, not yet removed).
    pub fn crowdsec_entries(&self) -> Result<Vec<(IpNet, Ban)>> {
        let mut out = Vec::new();
        for item in self.crowdsec_v4.iter() {
            let (key, ban) = item.map_err(map_err(names::CROWDSEC_V4))?;
            out.push((v4_net(key.data(), key.prefix_len()), ban));
        }
        for item in self.crowdsec_v6.iter() {
            let (key, ban) = item.map_err(map_err(names::CROWDSEC_V6))?;
            out.push((v6_net(key.data(), key.prefix_len()), ban));
        }
        Ok(out)
    }

    /// Applies a batch of CrowdSec changes: removals first, then upserts. An upsert the full
    /// trie refuses is reported in `full`, never an error: the rest of the batch still applies.
    /// Writers hold the lists lock (`pins::lists_lock`) so the `present` bits stay exact.
    pub fn crowdsec_apply(
        &mut self,
        removals: &[IpNet],
        upserts: &[(IpNet, Ban)],
    ) -> Result<DecisionsApplied> {
        let mut out = DecisionsApplied::default();
        for net in removals {
            let r = match net {
                IpNet::V4(n) => self
                    .crowdsec_v4
                    .remove(&Key::new(n.prefix_len() as u32, n.network().octets())),
                IpNet::V6(n) => self
                    .crowdsec_v6
                    .remove(&Key::new(n.prefix_len() as u32, n.network().octets())),
            };
            out.removed += remove_existing(r).map_err(map_err(names::CROWDSEC_V4))? as u64;
        }
        if !upserts.is_empty() {
            self.set_present(present::CROWDSEC, true)?;
        }
        for (net, ban) in upserts {
            let r = match net {
                IpNet::V4(n) => self.crowdsec_v4.insert(
                    &Key::new(n.prefix_len() as u32, n.network().octets()),
                    ban,
                    0,
                ),
                IpNet::V6(n) => self.crowdsec_v6.insert(
                    &Key::new(n.prefix_len() as u32, n.network().octets()),
                    ban,
                    0,
                ),
            };
            match r {
                Ok(()) => out.stored += 1,
                Err(MapError::SyscallError(e))
                    if matches!(e.io_error.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG)) =>
                {
                    out.full.push(*net)
                }
                Err(e) => return Err(map_err(names::CROWDSEC_V4)(e)),
            }
        }
        if !removals.is_empty() || !out.full.is_empty() {
            let empty = self.crowdsec_v4.keys().next().is_none()
                && self.crowdsec_v6.keys().next().is_none();
            self.refresh_present(present::CROWDSEC, empty)?;
        }
        Ok(out)
    }

    /// Capacity of the CrowdSec tries (each family).
    pub fn crowdsec_capacity(&self) -> u64 {
        use aya::maps::IterableMap as _;
        self.crowdsec_v4
            .map()
            .info()
            .map(|i| i.max_entries() as u64)
            .unwrap_or(0)
    }

    // --- trusted relays ----------------------------------------------------------------------

    /// Marks a source as a trusted relay until `trust.until`. The caller holds the lists lock
    /// (the `present` bit is set first, so the kernel never skips a map holding an entry).
    pub fn trust(&mut self, key: &SourceKey, trust: &Trust) -> Result<()> {
        self.set_present(present::TRUSTED, true)?;
        self.trusted
            .insert(key, trust, 0)
            .map_err(map_err(names::TRUSTED))
    }

    /// Removes a source's trust; true if it had one. The caller holds the lists lock.
    pub fn untrust(&mut self, key: &SourceKey) -> Result<bool> {
        let removed = remove_existing(self.trusted.remove(key)).map_err(map_err(names::TRUSTED))?;
        let empty = self.trusted.keys().next().is_none();
        self.refresh_present(present::TRUSTED, empty)?;
        Ok(removed)
    }

    /// A source's trust entry (in force or expired), if any.
    pub fn trust_of(&self, key: &SourceKey) -> Result<Option<Trust>> {
        match self.trusted.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::TRUSTED)(e)),
        }
    }

    /// Every trust entry.
    pub fn trusted_entries(&self) -> Result<Vec<(SourceKey, Trust)>> {
        self.trusted
            .iter()
            .map(|r| r.map_err(map_err(names::TRUSTED)))
            .collect()
    }

    // --- sources -----------------------------------------------------------------------------

    pub fn source(&self, key: &SourceKey) -> Result<Option<SourceState>> {
        match self.sources.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::SOURCES)(e)),
        }
    }

    pub fn set_source(&mut self, key: &SourceKey, st: &SourceState) -> Result<()> {
        self.sources
            .insert(key, st, 0)
            .map_err(map_err(names::SOURCES))
    }

    /// The bounce state of a source that sent bounces.
    pub fn bouncer(&self, key: &SourceKey) -> Result<Option<BounceState>> {
        match self.bouncers.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::BOUNCERS)(e)),
        }
    }

    pub fn set_bouncer(&mut self, key: &SourceKey, st: &BounceState) -> Result<()> {
        self.bouncers
            .insert(key, st, 0)
            .map_err(map_err(names::BOUNCERS))
    }
}

/// The layout number in the pinned `META[0]` of `dir`, whatever size META has there: a build
/// with another layout may have another `Meta`, which the typed [`open_meta`] cannot open, and
/// such pins must be named as another layout, never mistaken for an unfinished start and
/// cleared. The layout is `Meta`'s first field in every layout.
pub fn pinned_layout(dir: &Path) -> Result<u32> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let path = dir.join(names::META);
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Pin {
        path: path.display().to_string(),
        error: source,
    })?;
    let size = data.info().map_err(map_err(names::META))?.value_size() as usize;
    if !(4..=1 << 16).contains(&size) {
        return Ok(0);
    }
    let key = 0u32;
    let mut value = vec![0u8; size];
    // The kernel's union bpf_attr for BPF_MAP_LOOKUP_ELEM: map_fd (u32), padding, key and
    // value pointers (u64 each), flags (u64).
    #[repr(C)]
    struct LookupAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = LookupAttr {
        map_fd: data.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    // SAFETY: BPF_MAP_LOOKUP_ELEM with a valid map descriptor, a 4-byte key and a buffer of the
    // map's value size, both alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &attr as *const LookupAttr,
            std::mem::size_of::<LookupAttr>(),
        )
    };
    if rc != 0 {
        return Err(MapsError::Pin {
            path: path.display().to_string(),
            error: MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_elem",
                io_error: std::io::Error::last_os_error(),
            }),
        });
    }
    Ok(u32::from_ne_bytes([value[0], value[1], value[2], value[3]]))
}

/// Reads `META[0]` from a pin directory without opening anything else.
pub fn open_meta(dir: &Path) -> Result<Meta> {
    let mut d = dir;
    let meta: Array<MapData, Meta> = take(&mut d, names::META)?;
    meta.get(&0, 0).map_err(map_err(names::META))
}

fn remove_existing(r: std::result::Result<(), MapError>) -> std::result::Result<bool, MapError> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn list_full(list: List, e: MapError) -> MapsError {
    match &e {
        MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOSPC) => {
            MapsError::ListFull {
                list: list.name(),
                entries: smtp_xdp_common::MAX_LIST_ENTRIES as usize,
            }
        }
        _ => MapsError::Map {
            name: "list",
            error: e,
        },
    }
}

/// What [`Maps::crowdsec_apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecisionsApplied {
    pub removed: u64,
    pub stored: u64,
    /// Upserts refused because the trie of their family is full.
    pub full: Vec<IpNet>,
}

/// A per-source ban or a manual network ban.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanEntry {
    pub target: BanTarget,
    pub ban: Ban,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BanTarget {
    Source(SourceKey),
    Net(IpNet),
}

fn v4_net(data: [u8; 4], prefix: u32) -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(data), prefix.min(32) as u8).unwrap_or_default())
}

fn v6_net(data: [u8; 16], prefix: u32) -> IpNet {
    IpNet::V6(Ipv6Net::new(Ipv6Addr::from(data), prefix.min(128) as u8).unwrap_or_default())
}

/// The network a source key stands for (its address with the prefix it was masked to).
pub fn key_net(key: &SourceKey, policy: Option<&Policy>) -> IpNet {
    let addr = key.addr();
    if key.family() == FAMILY_V4 {
        let prefix = policy.map_or(32, |p| p.ipv4_prefix);
        v4_net([addr[0], addr[1], addr[2], addr[3]], prefix)
    } else {
        let prefix = policy.map_or(MAX_IPV6_PREFIX, |p| p.ipv6_prefix.min(MAX_IPV6_PREFIX));
        v6_net(addr, prefix)
    }
}

/// The source key of an address under `policy`'s prefixes.
pub fn addr_key(addr: IpAddr, policy: &Policy) -> SourceKey {
    match addr {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            SourceKey::masked(FAMILY_V4, &b, policy.ipv4_prefix)
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => addr_key(IpAddr::V4(v4), policy),
            None => SourceKey::masked(FAMILY_V6, &a.octets(), policy.ipv6_prefix),
        },
    }
}

/// Slots for a new port set: ports already protected keep their slot (and counters).
fn reslot(old: &[u16; MAX_PORTS], new: &[u16; MAX_PORTS]) -> [u16; MAX_PORTS] {
    let mut out = [0u16; MAX_PORTS];
    for (slot, &port) in old.iter().enumerate() {
        if port != 0 && new.contains(&port) {
            out[slot] = port;
        }
    }
    for &port in new.iter().filter(|&&p| p != 0) {
        if !out.contains(&port) {
            if let Some(free) = out.iter().position(|&p| p == 0) {
                out[free] = port;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reslot_keeps_existing_slots() {
        let old = [25, 465, 587, 0, 0, 0, 0, 0];
        let new = [2525, 25, 0, 0, 0, 0, 0, 0];
        assert_eq!(reslot(&old, &new), [25, 2525, 0, 0, 0, 0, 0, 0]);
        assert_eq!(reslot(&[0; 8], &old), old);
    }

    #[test]
    fn keys_mask_and_map_v4_in_v6() {
        let p = crate::config::Settings::default().policy();
        let k = addr_key("2001:db8:1:2:3:4:5:6".parse().unwrap(), &p);
        assert_eq!(key_net(&k, Some(&p)).to_string(), "2001:db8:1:2::/64");
        let k4 = addr_key("::ffff:198.18.0.9".parse().unwrap(), &p);
        assert_eq!(key_net(&k4, Some(&p)).to_string(), "198.18.0.9/32");
    }
}
