//! Map names, keys, values and counter indices: the contract between kernel and controller.

use crate::limiter::Gcra;

/// Map names as they appear in the ELF object and as file names under the pin directory.
pub mod names {
    pub const POLICY: &str = "POLICY";
    pub const SELECT: &str = "SELECT";
    pub const SOURCES: &str = "SOURCES";
    pub const BOUNCERS: &str = "BOUNCERS";
    pub const BANS: &str = "BANS";
    pub const BAN_FILTER: &str = "BAN_FILTER";
    pub const ALLOW_V4_A: &str = "ALLOW_V4_A";
    pub const ALLOW_V4_B: &str = "ALLOW_V4_B";
    pub const ALLOW_V6_A: &str = "ALLOW_V6_A";
    pub const ALLOW_V6_B: &str = "ALLOW_V6_B";
    pub const DENY_V4_A: &str = "DENY_V4_A";
    pub const DENY_V4_B: &str = "DENY_V4_B";
    pub const DENY_V6_A: &str = "DENY_V6_A";
    pub const DENY_V6_B: &str = "DENY_V6_B";
    pub const BANNED_NETS_V4: &str = "BANNED_NETS_V4";
    pub const BANNED_NETS_V6: &str = "BANNED_NETS_V6";
    pub const COUNTERS: &str = "COUNTERS";
    pub const USER_COUNTERS: &str = "USER_COUNTERS";
    pub const PORT_STATS: &str = "PORT_STATS";
    pub const GLOBAL_GUARD: &str = "GLOBAL_GUARD";
    pub const STORM: &str = "STORM";
    pub const EVENTS: &str = "EVENTS";
    pub const META: &str = "META";
    pub const TRUSTED: &str = "TRUSTED";
    pub const CROWDSEC_V4: &str = "CROWDSEC_V4";
    pub const CROWDSEC_V6: &str = "CROWDSEC_V6";
    pub const CLOCK: &str = "CLOCK";

    /// Every map the controller pins (all but the per-CPU scan scratch area).
    pub const PINNED: [&str; 27] = [
        POLICY,
        SELECT,
        SOURCES,
        BOUNCERS,
        BANS,
        BAN_FILTER,
        ALLOW_V4_A,
        ALLOW_V4_B,
        ALLOW_V6_A,
        ALLOW_V6_B,
        DENY_V4_A,
        DENY_V4_B,
        DENY_V6_A,
        DENY_V6_B,
        BANNED_NETS_V4,
        BANNED_NETS_V6,
        COUNTERS,
        USER_COUNTERS,
        PORT_STATS,
        GLOBAL_GUARD,
        STORM,
        EVENTS,
        META,
        TRUSTED,
        CROWDSEC_V4,
        CROWDSEC_V6,
        CLOCK,
    ];
}

/// Indices of the `SELECT` array. Each holds 0 or 1: which of two copies is live. Writers fill the
/// other copy completely, then flip the index with one 4-byte store, so the kernel (and anyone
/// killed half-way) only ever sees a whole old or a whole new list or policy.
pub mod select {
    pub const ALLOW: u32 = 0;
    pub const DENY: u32 = 1;
    pub const POLICY: u32 = 2;
    /// Bits of [`present`]: which tries hold entries, so the kernel skips lookups into empty
    /// ones (an empty LPM lookup still costs tens of nanoseconds per SYN).
    pub const PRESENT: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Slots of the `CLOCK` array, how the program reads the boot clock (CLOCK_BOOTTIME, the clock of
/// every timestamp in the maps) without a clock-source read per verdict.
///
/// Calibrated (`NS_PER_JIFFY` != 0), "now" is `jiffies * NS_PER_JIFFY + JIFFY_BASE`: the verifier
/// inlines `bpf_jiffies64` into one load, and the kernel advances jiffies by exactly one tick of
/// CLOCK_MONOTONIC each (so the epoch does not drift). Before that, it is the coarse monotonic
/// clock plus `SUSPENDED`. Either way it trails the boot clock by up to a tick. Each slot is
/// one 8-byte store; writers set `JIFFY_BASE` before `NS_PER_JIFFY`.
pub mod clock_slot {
    /// CLOCK_BOOTTIME − CLOCK_MONOTONIC: the time spent suspended since boot.
    pub const SUSPENDED: u32 = 0;
    /// Nanoseconds of CLOCK_MONOTONIC per jiffy (the kernel's TICK_NSEC); 0 = not calibrated.
    pub const NS_PER_JIFFY: u32 = 1;
    /// CLOCK_MONOTONIC at jiffy 0 as calibrated (wrapping: jiffies start near 2^32).
    pub const JIFFY_EPOCH: u32 = 2;
    /// `JIFFY_EPOCH + SUSPENDED` (wrapping), what the program adds.
    pub const JIFFY_BASE: u32 = 3;
    /// Three slots the sampler program writes: coarse clock, jiffies, coarse clock again.
    pub const SAMPLE: u32 = 4;
    pub const COUNT: u32 = 7;
}

/// Bits of `SELECT[select::PRESENT]`. A writer sets a bit before the first entry goes in and
/// clears it only after seeing the trie empty, under the lists lock, so the kernel never skips a
/// trie that holds an entry.
pub mod present {
    pub const ALLOW: u32 = 1;
    pub const DENY: u32 = 2;
    pub const BANNED_NETS: u32 = 4;
    /// `TRUSTED` holds entries (set by the DNSBL service before its first insert).
    pub const TRUSTED: u32 = 8;
    /// `CROWDSEC_V4` / `CROWDSEC_V6`: decisions of a CrowdSec Local API.
    pub const CROWDSEC: u32 = 16;
}

/// Slots of `BAN_FILTER`: per slot, how many `BANS` keys hash to it (an over-count is allowed,
/// an under-count never). A SYN whose slot holds 0 has no ban, and skips the `BANS` lookup.
///
/// Every writer of `BANS` keeps it so: it adds one to the slot before inserting a new key
/// (`BPF_NOEXIST`), takes it back when the key already existed (and then replaces it with
/// `BPF_EXIST`, starting over if the key vanished meanwhile), and subtracts one only after a
/// delete that removed the key. The map is memory-mapped by the controller, so both sides update
/// it with atomic adds.
pub const BAN_FILTER_SLOTS: u32 = 1 << 16;

/// The `BAN_FILTER` slot of a source key (a multiplicative hash of its eight bytes).
#[inline(always)]
pub fn ban_filter_slot(key: &SourceKey) -> u32 {
    let k = u64::from_ne_bytes(key.bytes);
    (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as u32 & (BAN_FILTER_SLOTS - 1)
}

/// Default sizes of the maps the controller can resize.
pub const DEFAULT_MAX_SOURCES: u32 = 1 << 20;
/// `BOUNCERS` holds one entry for this many `SOURCES` entries (few sources send bounces).
pub const SOURCES_PER_BOUNCER: u32 = 16;
/// Fewest `BOUNCERS` entries, however small the per-source table.
pub const MIN_BOUNCERS: u32 = 64;
pub const DEFAULT_MAX_BANS: u32 = 1 << 16;
pub const MAX_LIST_ENTRIES: u32 = 1 << 20;
pub const MAX_BANNED_NETS: u32 = 1 << 16;
/// Trusted relays (DNS allowlist answers) held at once.
pub const MAX_TRUSTED: u32 = 1 << 14;
/// Default capacity of each CrowdSec decision trie (IPv4 and IPv6): room for big blocklists.
/// Entries are allocated on demand (`BPF_F_NO_PREALLOC`), so an empty trie costs nothing.
pub const DEFAULT_MAX_DECISIONS: u32 = 1 << 18;
pub const EVENTS_BYTES: u32 = 1 << 18;
/// Slots of `COUNTERS` and `USER_COUNTERS`: room to add counters without a new map layout.
pub const COUNTER_SLOTS: u32 = 64;
/// Bytes of `Meta::state_path`.
pub const STATE_PATH_BYTES: usize = 256;
/// Bytes of `Meta::program_version`.
pub const PROGRAM_VERSION_BYTES: usize = 32;

/// Address families, as [`SourceKey::family`] and the parser name them.
pub const FAMILY_V4: u32 = 4;
pub const FAMILY_V6: u32 = 6;

/// Longest IPv6 prefix a [`SourceKey`] holds: sources are counted per /64 at the finest.
pub const MAX_IPV6_PREFIX: u32 = 64;

/// First four bytes of an IPv4 [`SourceKey`]. `ffff:ffff::/32` lies in the IPv6 multicast
/// range, which is never a source address, so no IPv6 key of a real source starts with them.
const V4_TAG: [u8; 4] = [0xff; 4];

/// The identity the limiter counts by: an address masked to the configured prefix, in eight
/// bytes (the key width decides the per-source table's memory).
///
/// IPv4: `ff ff ff ff a b c d` (the tag, then the masked address). IPv6: the masked first 64
/// bits (a prefix is at most [`MAX_IPV6_PREFIX`] long).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub bytes: [u8; 8],
}

impl SourceKey {
    /// The key of `addr` (IPv4 in the first four bytes when `family` is 4) masked to `prefix` bits
    /// (at most 32 for IPv4, [`MAX_IPV6_PREFIX`] for IPv6).
    #[inline(always)]
    pub fn masked(family: u32, addr: &[u8; 16], prefix: u32) -> Self {
        // Whole-word masks: the XDP program computes a key on every SYN, and a byte loop with a
        // mask per byte was about 150 instructions where these are a dozen.
        if family == FAMILY_V4 {
            let a = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
            let prefix = if prefix > 32 { 32 } else { prefix };
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            let m = (a & mask).to_be_bytes();
            SourceKey {
                bytes: [
                    V4_TAG[0], V4_TAG[1], V4_TAG[2], V4_TAG[3], m[0], m[1], m[2], m[3],
                ],
            }
        } else {
            let a = u64::from_be_bytes([
                addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
            ]);
            let prefix = if prefix > MAX_IPV6_PREFIX {
                MAX_IPV6_PREFIX
            } else {
                prefix
            };
            let mask = if prefix == 0 {
                0
            } else {
                u64::MAX << (64 - prefix)
            };
            SourceKey {
                bytes: (a & mask).to_be_bytes(),
            }
        }
    }

    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    #[inline(always)]
    pub fn family(&self) -> u32 {
        if self.bytes[..4] == V4_TAG {
            FAMILY_V4
        } else {
            FAMILY_V6
        }
    }

    /// The masked address in sixteen bytes (IPv4 in the first four, the rest zero).
    #[inline(always)]
    pub fn addr(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        if self.family() == FAMILY_V4 {
            out[..4].copy_from_slice(&self.bytes[4..]);
        } else {
            out[..8].copy_from_slice(&self.bytes);
        }
        out
    }
}

/// Per-source state in the `SOURCES` LRU map: 24 bytes, so that with its 8-byte key an entry
/// costs the kernel 96 bytes (48 of element header, 16 of hash bucket). Bounce state, which
/// few sources have, lives apart in `BOUNCERS` ([`BounceState`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    /// GCRA theoretical arrival time of the next SYN, in boot-clock nanoseconds. Without a SYN
    /// yet, 0; after an admitted SYN, that SYN's time plus one interval at least (so it also
    /// tells when the source was last admitted).
    pub syn_tat: u64,
    /// SYNs to protected ports charged to this source's rate (saturating; statistics).
    pub syns: u32,
    /// Of those, over the rate: dropped, or would-drop in monitor mode (saturating; statistics).
    pub drops: u32,
    /// Start of the current offence window (rate drops counted towards a ban), in boot-clock
    /// seconds.
    pub window_start: u32,
    /// Rate drops inside the current offence window (saturating).
    pub window_drops: u16,
    /// [`source_flags`] bits.
    pub flags: u16,
}

impl SourceState {
    /// Counts a SYN in the statistics (plain adds: a race between CPUs can lose a count, never
    /// a verdict).
    #[inline(always)]
    pub fn count_syn(&mut self) {
        self.syns = self.syns.saturating_add(1);
    }

    /// Counts a rate drop in the statistics.
    #[inline(always)]
    pub fn count_drop(&mut self) {
        self.drops = self.drops.saturating_add(1);
    }
}

/// Bounce state of a source that sent bounces (`BOUNCERS`, an LRU map keyed by [`SourceKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceState {
    /// GCRA theoretical arrival time of the next bounce.
    pub bounce_tat: u64,
    /// Null-sender `MAIL FROM` commands counted for this source (saturating).
    pub bounces: u32,
    /// [`bounce_flags`] bits.
    pub flags: u32,
}

/// Bits of [`BounceState::flags`].
pub mod bounce_flags {
    /// The last bounce charged to the source's bounce bucket was over the limit (cleared by the
    /// next one within it). The policy service reads it for a trusted relay, which is never
    /// banned, to refuse its over-limit messages one by one.
    pub const BOUNCE_OVER: u32 = 1;
}

/// Bits of [`SourceState::flags`].
pub mod source_flags {
    /// First seen while a bounce storm was on: held to the storm's connection burst until the
    /// storm ends.
    pub const NEW_IN_STORM: u16 = 2;
}

/// Why a source is in the penalty box.
pub mod ban_reason {
    pub const RATE: u32 = 1;
    pub const BOUNCES: u32 = 2;
    pub const MANUAL: u32 = 3;
    /// Listed on DNS blocklists (score at or above `dnsbl-threshold`); issued by the controller.
    pub const DNSBL: u32 = 4;
    /// A decision of a CrowdSec Local API (kept in the `CROWDSEC_*` tries, apart from the
    /// local penalty box).
    pub const CROWDSEC: u32 = 5;
}

/// Bits of [`Ban::flags`].
pub mod ban_flags {
    /// Issued in monitor mode: what enforcement would have banned. It never drops, never
    /// counts as a previous offence once enforcing, and the controller clears it when
    /// enforcement starts.
    pub const WOULD: u32 = 1;
}

/// A penalty-box entry (`BANS` keyed by [`SourceKey`], `BANNED_NETS_*` and `CROWDSEC_*` keyed by
/// prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ban {
    /// The ban admits again from this boot-clock time on.
    pub until: u64,
    /// When the ban was issued (boot clock).
    pub since: u64,
    /// Escalation level: 0 for a first offence, +1 for each repeat within the memory window.
    pub level: u32,
    /// One of [`ban_reason`].
    pub reason: u32,
    /// [`ban_flags`] bits.
    pub flags: u32,
    pub _reserved: u32,
}

impl Ban {
    /// A ban by hand (or restored as such) from `now` for `length_ns`, at escalation level 0.
    pub fn manual(now: u64, length_ns: u64) -> Self {
        Ban {
            until: now.saturating_add(length_ns),
            since: now,
            level: 0,
            reason: ban_reason::MANUAL,
            ..Ban::default()
        }
    }
}

/// A trusted relay (`TRUSTED`, keyed by [`SourceKey`]): its DNS allowlist score is at or below
/// `dnsbl-allow-threshold`. No limit puts it in the penalty box: its over-limit SYNs are admitted
/// and its over-limit bounces only counted, until `until`. The controller inserts and removes
/// entries; the kernel reads them only when a source is over a limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// Trusted until this boot-clock time (the DNS answer's TTL).
    pub until: u64,
    /// When the answer came (boot clock).
    pub since: u64,
    /// The address that was looked up (IPv4 in the first four bytes; the key's family), so the
    /// controller can ask again before the answer expires.
    pub addr: [u8; 16],
    /// The combined DNS list score.
    pub score: i32,
    pub _reserved: u32,
}

impl Trust {
    /// Whether the trust holds at `now`.
    #[inline(always)]
    pub fn holds(&self, now: u64) -> bool {
        now < self.until
    }
}

/// Policy flag bits.
pub mod policy_flags {
    /// Monitor mode: count what would be dropped, drop nothing.
    pub const DRY_RUN: u32 = 1;
    /// BATV is on: bounces are judged by the policy service, which sees the recipient and its
    /// tag. The kernel, which cannot check a signature, only counts them (totals, per-source
    /// `bounces`, storm detection) and never charges a bounce bucket or bans for them.
    pub const BOUNCES_JUDGED: u32 = 2;
}

/// The live policy (`POLICY[0]`). The controller rewrites it whole, at any time.
///
/// Rates are stored in GCRA form, precomputed by the controller, so the kernel never multiplies
/// (a checked 64-bit multiply compiles to a 128-bit libcall BPF does not have).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// New connections per source.
    pub syn: Gcra,
    /// New connections per source while a storm is on, for sources that sent bounces or first
    /// appeared during the storm: `syn` with its burst divided by the storm factor.
    pub syn_storm: Gcra,
    /// Bounces per source; `interval_ns == 0` disables bounce limiting (bounces are still counted).
    pub bounce: Gcra,
    /// Bounces per source while a storm is on (the `bounce` limit tightened by the storm factor).
    pub bounce_storm: Gcra,
    /// New connections per protected port, all sources together; `interval_ns == 0` = off.
    pub global: Gcra,
    /// Offence window for rate drops.
    pub ban_window_ns: u64,
    /// First ban's length; each repeat doubles it.
    pub ban_base_ns: u64,
    /// Longest ban.
    pub ban_max_ns: u64,
    /// How long an expired ban still counts as a previous offence for escalation.
    pub ban_memory_ns: u64,
    /// Rate drops within `ban_window_ns` that put a source in the penalty box; 0 = never.
    pub ban_threshold: u32,
    pub ipv4_prefix: u32,
    pub ipv6_prefix: u32,
    /// [`policy_flags`] bits.
    pub flags: u32,
    /// Protected ports by slot (0 = free slot). The kernel reads its port table (the program's
    /// global `PORT_TABLE`, written from this by the controller); this copy lets readers name the
    /// per-port counters.
    pub ports: [u16; crate::MAX_PORTS],
}

impl Policy {
    #[inline(always)]
    pub fn dry_run(&self) -> bool {
        self.flags & policy_flags::DRY_RUN != 0
    }

    /// Whether bounces are judged by the policy service (BATV), not charged by the kernel.
    #[inline(always)]
    pub fn bounces_judged(&self) -> bool {
        self.flags & policy_flags::BOUNCES_JUDGED != 0
    }
}

/// The program's port table: one byte per destination port, 0 = not protected, otherwise
/// slot + 1 in the low bits and flags above. A byte, so that a whole-table rewrite can never be
/// read torn, and so the table (64 KiB) is a fixed part of the program's global data.
pub mod port_flags {
    pub const SLOT_MASK: u8 = 0x0f;
    /// Scan client payload on this port for `MAIL FROM:<>` (plaintext SMTP: port 25).
    pub const SCAN_BOUNCES: u8 = 0x80;
    /// Entries of the table: one per port.
    pub const TABLE_LEN: usize = 1 << 16;

    /// The table entry of `port` in `slot`.
    pub const fn entry(slot: usize, port: u16) -> u8 {
        let v = (slot as u8 + 1) & SLOT_MASK;
        if port == 25 {
            v | SCAN_BOUNCES
        } else {
            v
        }
    }
}

const _: () = assert!(crate::MAX_PORTS < port_flags::SLOT_MASK as usize);

/// Per-CPU counters per protected port slot (`PORT_STATS[slot]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub syn_admitted: u64,
    pub syn_dropped: u64,
    pub syn_would_drop: u64,
}

/// Indices of the per-CPU `COUNTERS` array. One packet increments exactly one of the packet
/// counters (those [`Counter::is_verdict`] names); the rest count events. New counters go at the
/// end: the indices are the pinned layout.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Not a TCP segment to a protected port.
    PassNotSmtp = 0,
    /// Truncated, malformed, fragmented or otherwise unparseable: passed (fail open).
    PassUnparsed,
    /// A non-SYN segment to a protected port (established traffic).
    PassSmtpOther,
    SynAdmitted,
    SynAllowlisted,
    DropDeny,
    DropBan,
    DropRate,
    DropGlobal,
    WouldDropDeny,
    WouldDropBan,
    WouldDropRate,
    WouldDropGlobal,
    /// Null-sender commands seen by the kernel.
    BouncesKernel,
    BansRate,
    BansBounces,
    SourcesCreated,
    SourceInsertFailed,
    BanInsertFailed,
    EventsLost,
    /// Port-25 payload larger than the scan window, not inspected.
    ScanSkipped,
    /// The policy map was empty (never happens after a successful start): passed.
    NoPolicy,
    /// Bans monitor mode would have issued (rate, bounces).
    WouldBansRate,
    WouldBansBounces,
    /// A SYN over its source's rate from a trusted relay: admitted (a packet verdict).
    SynTrusted,
    /// Over-limit bounces of a trusted relay, only counted (one per segment in the kernel).
    TrustedBounces,
    /// Bans for DNS blocklist listings. Issued in userspace only: environments there map these
    /// to user counters, and the kernel's slots stay 0.
    BansDnsbl,
    WouldBansDnsbl,
    /// SYNs dropped (or would-drop) for a CrowdSec decision.
    DropCrowdsec,
    WouldDropCrowdsec,
}

impl Counter {
    pub const COUNT: u32 = Counter::WouldDropCrowdsec as u32 + 1;

    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::PassNotSmtp,
        Counter::PassUnparsed,
        Counter::PassSmtpOther,
        Counter::SynAdmitted,
        Counter::SynAllowlisted,
        Counter::DropDeny,
        Counter::DropBan,
        Counter::DropRate,
        Counter::DropGlobal,
        Counter::WouldDropDeny,
        Counter::WouldDropBan,
        Counter::WouldDropRate,
        Counter::WouldDropGlobal,
        Counter::BouncesKernel,
        Counter::BansRate,
        Counter::BansBounces,
        Counter::SourcesCreated,
        Counter::SourceInsertFailed,
        Counter::BanInsertFailed,
        Counter::EventsLost,
        Counter::ScanSkipped,
        Counter::NoPolicy,
        Counter::WouldBansRate,
        Counter::WouldBansBounces,
        Counter::SynTrusted,
        Counter::TrustedBounces,
        Counter::BansDnsbl,
        Counter::WouldBansDnsbl,
        Counter::DropCrowdsec,
        Counter::WouldDropCrowdsec,
    ];

    /// True for the counters that count packets by verdict (exactly one per packet).
    pub const fn is_verdict(self) -> bool {
        matches!(
            self,
            Counter::PassNotSmtp
                | Counter::PassUnparsed
                | Counter::PassSmtpOther
                | Counter::SynAdmitted
                | Counter::SynAllowlisted
                | Counter::DropDeny
                | Counter::DropBan
                | Counter::DropRate
                | Counter::DropGlobal
                | Counter::WouldDropDeny
                | Counter::WouldDropBan
                | Counter::WouldDropRate
                | Counter::WouldDropGlobal
                | Counter::NoPolicy
                | Counter::SynTrusted
                | Counter::DropCrowdsec
                | Counter::WouldDropCrowdsec
        )
    }

    /// Stable snake_case name, used in `stats --json` and as metric label values.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassNotSmtp => "pass_not_smtp",
            Counter::PassUnparsed => "pass_unparsed",
            Counter::PassSmtpOther => "pass_smtp_other",
            Counter::SynAdmitted => "syn_admitted",
            Counter::SynAllowlisted => "syn_allowlisted",
            Counter::DropDeny => "drop_deny",
            Counter::DropBan => "drop_ban",
            Counter::DropRate => "drop_rate",
            Counter::DropGlobal => "drop_global",
            Counter::WouldDropDeny => "would_drop_deny",
            Counter::WouldDropBan => "would_drop_ban",
            Counter::WouldDropRate => "would_drop_rate",
            Counter::WouldDropGlobal => "would_drop_global",
            Counter::BouncesKernel => "bounces_kernel",
            Counter::BansRate => "bans_rate",
            Counter::BansBounces => "bans_bounces",
            Counter::SourcesCreated => "sources_created",
            Counter::SourceInsertFailed => "source_insert_failed",
            Counter::BanInsertFailed => "ban_insert_failed",
            Counter::EventsLost => "events_lost",
            Counter::ScanSkipped => "scan_skipped",
            Counter::NoPolicy => "no_policy",
            Counter::WouldBansRate => "would_bans_rate",
            Counter::WouldBansBounces => "would_bans_bounces",
            Counter::SynTrusted => "syn_trusted",
            Counter::TrustedBounces => "trusted_bounces",
            Counter::BansDnsbl => "bans_dnsbl_kernel",
            Counter::WouldBansDnsbl => "would_bans_dnsbl_kernel",
            Counter::DropCrowdsec => "drop_crowdsec",
            Counter::WouldDropCrowdsec => "would_drop_crowdsec",
        }
    }
}

/// Indices of the shared `USER_COUNTERS` array: what the controller counts, kept in a pinned map
/// so these counters survive a controller restart like the kernel's do.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserCounter {
    /// Null-sender requests reported by Postfix through the policy service.
    BouncesPolicy = 0,
    /// Bans the policy service issued for bounces.
    BansBouncesPolicy,
    /// Bans by hand (`smtp-xdp ban`) or restored from the state file.
    BansManual,
    PolicyRequests,
    /// Policy connections or requests refused as malformed, oversized or timed out.
    PolicyErrors,
    /// Expired bans swept from the maps.
    BansExpired,
    /// Storm mode activations.
    StormsStarted,
    /// Bans monitor mode would have issued for bounces reported through the policy service.
    WouldBansBouncesPolicy,
    /// State saves that failed (the daemon's periodic and final saves).
    StateSaveFailures,
    /// Sources the daemon's census counted, and when (boot-clock ns): `status` reads these
    /// instead of walking a table of a million entries.
    CensusTracked,
    CensusAt,
    /// Bounces judged by their BATV tag (one per recipient): a valid tag.
    BatvValid,
    /// No, an invalid or an expired tag (refused in enforce mode).
    BatvBackscatter,
    /// Untagged, accepted in the grace period.
    BatvUntaggedGrace,
    /// To a recipient that takes untagged bounces (postmaster, abuse, ...).
    BatvExempt,
    /// Senders signed by the socketmap service.
    BatvSignatures,
    SocketmapRequests,
    /// Socketmap connections or requests refused (malformed, oversized, timed out, unknown map).
    SocketmapErrors,
    /// DNS list lookups of a source (all lists asked), by outcome: the score is at or above
    /// `dnsbl-threshold` ...
    DnsblListed,
    /// ... at or below `dnsbl-allow-threshold` ...
    DnsblTrusted,
    /// ... in between (not listed, or not enough) ...
    DnsblNeutral,
    /// ... or unknown: a list's server failed, refused or timed out (nothing is decided).
    DnsblErrors,
    /// Lookups not made: the queue was full or the lookup rate spent (a spoofed flood must not
    /// become a DNS flood).
    DnsblDropped,
    /// Events answered from the cache without a lookup.
    DnsblCacheHits,
    /// Bans (and would-bans) issued for DNS blocklist listings.
    BansDnsbl,
    WouldBansDnsbl,
    /// Over-limit bounces of trusted relays the policy service counted (never charged to a ban).
    TrustedBouncesPolicy,
    /// Messages of trusted relays the policy service refused (deferred, or backscatter refused).
    TrustedRefusals,
    /// Automatic bans lifted because their source turned out to be a trusted relay (its first
    /// crossing happened before the answer came).
    TrustedBansLifted,
    /// CrowdSec: local bans reported to the Local API as alerts, and those dropped (queue full).
    CrowdsecAlertsSent,
    CrowdsecAlertsDropped,
    /// CrowdSec: decision stream pulls that failed (LAPI down, refused, malformed answer).
    CrowdsecPollErrors,
    /// CrowdSec: networks newly enforced, and removed (deleted or gone at a resync).
    CrowdsecDecisionsAdded,
    CrowdsecDecisionsDeleted,
    /// CrowdSec: decisions not enforced, by reason (`crowdsec::Skipped` order).
    CrowdsecSkippedNotBan,
    CrowdsecSkippedScope,
    CrowdsecSkippedSimulated,
    CrowdsecSkippedInvalid,
    CrowdsecSkippedExpired,
    CrowdsecSkippedFiltered,
    CrowdsecSkippedOwn,
    CrowdsecSkippedCapacity,
}

impl UserCounter {
    pub const COUNT: u32 = UserCounter::CrowdsecSkippedCapacity as u32 + 1;
}

/// Event kinds on the `EVENTS` ring buffer.
pub mod event_kind {
    /// A source was put in the penalty box (`reason`, `level`, `value` = duration in ns).
    pub const BAN: u32 = 1;
    /// A source's first rate drop in an offence window (`value` = its SYN count).
    pub const FIRST_DROP: u32 = 2;
    /// A source went over its bounce limit (`value` = its bounce count).
    pub const BOUNCE_LIMIT: u32 = 3;
    /// Monitor mode would have banned a source (fields as for [`BAN`]).
    pub const WOULD_BAN: u32 = 4;
    /// A bounce without a valid BATV tag (from the policy service only; never on the ring).
    pub const BACKSCATTER: u32 = 5;
    /// DNS allowlists made a source a trusted relay (from the DNSBL service only).
    pub const TRUSTED: u32 = 6;
    /// One more than the highest kind.
    pub const COUNT: u32 = 7;
}

/// One ring-buffer event (56 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub reason: u32,
    pub key: SourceKey,
    pub level: u32,
    pub _reserved: u32,
    pub value: u64,
    pub at: u64,
    /// The source's full address (the key is masked to the prefix): DNS lists are asked per
    /// address, IPv6 included. IPv4 in the first four bytes; the family is the key's.
    pub addr: [u8; 16],
}

impl Event {
    /// What `BanEnv::event` reports, built alike by the kernel and the controller: a ban's reason,
    /// level and length when the event is about one, else `count(kind)`, the count behind it (a
    /// source's bounces for a bounce-limit event, its SYNs for a first drop), asked only then.
    #[inline(always)]
    pub fn about(
        kind: u32,
        key: SourceKey,
        addr: [u8; 16],
        at: u64,
        ban: Option<&Ban>,
        count: impl FnOnce(u32) -> u64,
    ) -> Self {
        let mut ev = Event {
            kind,
            key,
            at,
            addr,
            ..Event::default()
        };
        match ban {
            Some(b) => {
                ev.reason = b.reason;
                ev.level = b.level;
                ev.value = b.until - b.since;
            }
            None => ev.value = count(kind),
        }
        ev
    }
}

/// `META[0]`: stamped last when a controller finished setting up the pinned state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// [`crate::LAYOUT_VERSION`] of the controller that stamped the state; 0 = set-up unfinished.
    pub layout: u32,
    /// The XDP mode obtained: 1 = native (driver), 2 = generic (skb), 3 = offload.
    pub xdp_mode: u32,
    pub ifindex: u32,
    pub _reserved: u32,
    /// Boot-clock time the program was first attached.
    pub attached_at: u64,
    /// Boot-clock time the current controller started (0 when none runs).
    pub controller_started: u64,
    /// The state file the controller saves to, NUL-padded, so CLI commands save their changes
    /// to the same file (empty: none known).
    pub state_path: [u8; STATE_PATH_BYTES],
    /// SHA-256 of the XDP object the controller loaded (all zero: not known), so `status` can
    /// tell when the program in the kernel is not the one the installed binary carries.
    pub program_sha256: [u8; 32],
    /// Version and commit of the controller that loaded the program, NUL-padded.
    pub program_version: [u8; PROGRAM_VERSION_BYTES],
}

impl Meta {
    /// Stores `path` (bytes of a file path); false when it does not fit.
    pub fn set_state_path(&mut self, path: &[u8]) -> bool {
        if path.len() >= STATE_PATH_BYTES {
            return false;
        }
        self.state_path = [0; STATE_PATH_BYTES];
        self.state_path[..path.len()].copy_from_slice(path);
        true
    }

    /// The stored state path's bytes (empty when none is known).
    pub fn state_path(&self) -> &[u8] {
        let end = self
            .state_path
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(STATE_PATH_BYTES);
        &self.state_path[..end]
    }

    /// Records the program loaded: its object's hash and the loading build's version (cut to
    /// fit).
    pub fn set_program(&mut self, sha256: [u8; 32], version: &[u8]) {
        self.program_sha256 = sha256;
        self.program_version = [0; PROGRAM_VERSION_BYTES];
        let n = version.len().min(PROGRAM_VERSION_BYTES);
        self.program_version[..n].copy_from_slice(&version[..n]);
    }

    /// The recorded version's bytes (empty when none is known).
    pub fn program_version(&self) -> &[u8] {
        let end = self
            .program_version
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(PROGRAM_VERSION_BYTES);
        &self.program_version[..end]
    }
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            layout: 0,
            xdp_mode: 0,
            ifindex: 0,
            _reserved: 0,
            attached_at: 0,
            controller_started: 0,
            state_path: [0; STATE_PATH_BYTES],
            program_sha256: [0; 32],
            program_version: [0; PROGRAM_VERSION_BYTES],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and byte arrays, with no padding
    // (checked by the size assertions in the tests), so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::SourceState {}
    unsafe impl aya::Pod for super::BounceState {}
    unsafe impl aya::Pod for super::Ban {}
    unsafe impl aya::Pod for super::Policy {}
    unsafe impl aya::Pod for crate::limiter::Gcra {}
    unsafe impl aya::Pod for super::PortStats {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Meta {}
    unsafe impl aya::Pod for super::Trust {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<SourceKey>(), 8);
        assert_eq!(size_of::<SourceState>(), 8 + 3 * 4 + 2 * 2);
        assert_eq!(size_of::<BounceState>(), 8 + 2 * 4);
        assert_eq!(size_of::<Ban>(), 2 * 8 + 4 * 4);
        assert_eq!(size_of::<Policy>(), 14 * 8 + 4 * 4 + 2 * crate::MAX_PORTS);
        assert_eq!(size_of::<PortStats>(), 3 * 8);
        assert_eq!(size_of::<Event>(), 4 + 4 + 8 + 4 + 4 + 8 + 8 + 16);
        assert_eq!(size_of::<Trust>(), 2 * 8 + 16 + 2 * 4);
        assert_eq!(
            size_of::<Meta>(),
            4 * 4 + 2 * 8 + STATE_PATH_BYTES + 32 + PROGRAM_VERSION_BYTES
        );
        const { assert!(Counter::COUNT <= COUNTER_SLOTS && UserCounter::COUNT <= COUNTER_SLOTS) };
    }

    #[test]
    fn counters_are_listed_in_index_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?}");
        }
    }

    #[test]
    fn masking_keeps_prefix_bits_only() {
        let a = [192, 0, 2, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let k = SourceKey::masked(FAMILY_V4, &a, 32);
        assert_eq!((k.family(), k.addr()), (FAMILY_V4, a));
        assert_eq!(k.bytes, [0xff, 0xff, 0xff, 0xff, 192, 0, 2, 255]);
        assert_eq!(
            SourceKey::masked(FAMILY_V4, &a, 24).addr()[..4],
            [192, 0, 2, 0]
        );
        assert_eq!(
            SourceKey::masked(FAMILY_V4, &a, 20).addr()[..4],
            [192, 0, 0, 0]
        );
        let zero = SourceKey::masked(FAMILY_V4, &a, 0);
        assert_eq!((zero.family(), zero.addr()), (FAMILY_V4, [0; 16]));
        assert_eq!(SourceKey::masked(FAMILY_V4, &a, 99).addr(), a);
        let b = [
            0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let k = SourceKey::masked(FAMILY_V6, &b, 64);
        assert_eq!(k.family(), FAMILY_V6);
        assert_eq!(k.addr()[..8], b[..8]);
        assert_eq!(k.addr()[8..], [0; 8]);
        assert_eq!(SourceKey::masked(FAMILY_V6, &b, 128), k, "at most a /64");
        let k = SourceKey::masked(FAMILY_V6, &b, 60);
        assert_eq!(k.addr()[7], 0);
        assert_eq!(k.addr()[6], 3);
        // IPv4 keys never meet an IPv6 key of a unicast source.
        let v6 = SourceKey::masked(FAMILY_V6, &[0xff; 16], 64);
        assert_eq!(
            v6.family(),
            FAMILY_V4,
            "only a multicast address looks like IPv4"
        );
    }

    /// The key byte by byte, bit by bit: the oracle for the word arithmetic of `masked`.
    fn masked_bitwise(family: u32, addr: &[u8; 16], prefix: u32) -> [u8; 8] {
        let (width, offset) = if family == FAMILY_V4 {
            (32, 4)
        } else {
            (MAX_IPV6_PREFIX, 0)
        };
        let prefix = prefix.min(width);
        let mut out = [0u8; 8];
        if family == FAMILY_V4 {
            out[..4].copy_from_slice(&V4_TAG);
        }
        for bit in 0..width {
            let (byte, shift) = ((bit / 8) as usize, 7 - bit % 8);
            if bit < prefix && addr[byte] >> shift & 1 == 1 {
                out[offset + byte] |= 1 << shift;
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn masked_keys_match_a_bitwise_mask(
            addr in proptest::array::uniform16(proptest::prelude::any::<u8>()),
            prefix in 0u32..140,
            v4 in proptest::prelude::any::<bool>(),
        ) {
            let family = if v4 { FAMILY_V4 } else { FAMILY_V6 };
            proptest::prop_assert_eq!(
                SourceKey::masked(family, &addr, prefix).bytes,
                masked_bitwise(family, &addr, prefix)
            );
        }
    }
}
