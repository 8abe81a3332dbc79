//! smtp-xdp's XDP program: per-source SYN rate limiting, penalty box, allow/deny lists and
//! bounce counting for the protected SMTP ports. Everything that is not a new connection to a
//! protected port, or a port-25 command segment, passes after a header parse and one array lookup.
#![no_std]
#![no_main]
#![feature(core_intrinsics, asm_experimental_arch)]
#![expect(
    internal_features,
    reason = "core::sync::atomic has no compare-and-swap on bpfel (\"atomic-cas\": false in the target spec), the intrinsics do emit BPF_ATOMIC"
)]

use core::{
    arch::asm,
    ffi::c_void,
    intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering},
    ptr::read_volatile,
};

use aya_ebpf::{
    bindings::{xdp_action, BPF_EXIST, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_loop, bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
    EbpfContext,
};
use smtp_xdp_common::{
    bans, bounce, clock_slot,
    decide::{self, BanEnv, BounceVerdict, RateOutcome, SynEnv, SynVerdict},
    event_kind,
    limiter::Gcra,
    parse::{self, Frame, Segment, Skip},
    port_flags, present, select, Ban, BounceState, Counter, Event, Meta, Policy, PortStats,
    SourceKey, SourceState, Trust, BAN_FILTER_SLOTS, COUNTER_SLOTS, DEFAULT_MAX_BANS,
    DEFAULT_MAX_DECISIONS, DEFAULT_MAX_SOURCES, EVENTS_BYTES, FAMILY_V4, MAX_BANNED_NETS,
    MAX_LIST_ENTRIES, MAX_PORTS, MAX_TRUSTED, SCAN_WINDOW, SOURCES_PER_BOUNCER,
};

/// Two policy copies; `SELECT[select::POLICY]` names the live one.
#[map]
static POLICY: Array<Policy> = Array::with_max_entries(2, 0);
/// Which copy of the policy and of each list is live (see `smtp_xdp_common::select`).
#[map]
static SELECT: Array<u32> = Array::with_max_entries(select::COUNT, 0);
/// Indexed by destination port: 0 = not protected, else `port_flags`. Global data, not a map
/// lookup: the lookup's call clobbers the parsed header's registers and cost a third of a
/// non-SMTP packet's verdict (docs/benchmarks.md, issue 17). Each loaded program has its own
/// table, written by the controller from the live policy before the program is attached.
/// `#[no_mangle]` keeps the symbol external so the compiler cannot fold the never-written table
/// to zeros.
#[no_mangle]
static mut PORT_TABLE: [u8; port_flags::TABLE_LEN] = [0; port_flags::TABLE_LEN];
/// Per-source buckets and statistics; sized by the controller (`--max-sources`).
#[map]
static SOURCES: LruHashMap<SourceKey, SourceState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SOURCES, 0);
/// Bounce state of the sources that sent bounces; sized by the controller (a fraction of
/// `--max-sources`).
#[map]
static BOUNCERS: LruHashMap<SourceKey, BounceState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SOURCES / SOURCES_PER_BOUNCER, 0);
/// The penalty box. A plain hash, not LRU: a spoofed flood must not be able to evict bans.
#[map]
static BANS: HashMap<SourceKey, Ban> = HashMap::with_max_entries(DEFAULT_MAX_BANS, 0);
/// Per slot, how many `BANS` keys hash there (see `smtp_xdp_common::BAN_FILTER_SLOTS`): a SYN
/// whose slot is 0 skips the penalty-box lookup. Memory-mapped by the controller.
#[map]
static BAN_FILTER: Array<u64> = Array::with_max_entries(BAN_FILTER_SLOTS, BPF_F_MMAPABLE);

macro_rules! list_trie {
    ($name:ident, $key:ty) => {
        #[map]
        static $name: LpmTrie<$key, u32> =
            LpmTrie::with_max_entries(MAX_LIST_ENTRIES, BPF_F_NO_PREALLOC);
    };
}
// Allow and deny lists in two copies each (A/B), swapped whole by `SELECT`.
list_trie!(ALLOW_V4_A, [u8; 4]);
list_trie!(ALLOW_V4_B, [u8; 4]);
list_trie!(ALLOW_V6_A, [u8; 16]);
list_trie!(ALLOW_V6_B, [u8; 16]);
list_trie!(DENY_V4_A, [u8; 4]);
list_trie!(DENY_V4_B, [u8; 4]);
list_trie!(DENY_V6_A, [u8; 16]);
list_trie!(DENY_V6_B, [u8; 16]);

/// Manual bans of addresses and networks, with expiry.
#[map]
static BANNED_NETS_V4: LpmTrie<[u8; 4], Ban> =
    LpmTrie::with_max_entries(MAX_BANNED_NETS, BPF_F_NO_PREALLOC);
#[map]
static BANNED_NETS_V6: LpmTrie<[u8; 16], Ban> =
    LpmTrie::with_max_entries(MAX_BANNED_NETS, BPF_F_NO_PREALLOC);
/// Decisions of a CrowdSec Local API (with expiry), apart from the local penalty box; sized by
/// the controller (`--crowdsec-max-decisions`).
#[map]
static CROWDSEC_V4: LpmTrie<[u8; 4], Ban> =
    LpmTrie::with_max_entries(DEFAULT_MAX_DECISIONS, BPF_F_NO_PREALLOC);
#[map]
static CROWDSEC_V6: LpmTrie<[u8; 16], Ban> =
    LpmTrie::with_max_entries(DEFAULT_MAX_DECISIONS, BPF_F_NO_PREALLOC);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
/// Written by the controller only; declared here so it is created and pinned with the rest.
#[map]
static USER_COUNTERS: Array<u64> = Array::with_max_entries(COUNTER_SLOTS, 0);
#[map]
static PORT_STATS: PerCpuArray<PortStats> = PerCpuArray::with_max_entries(MAX_PORTS as u32, 0);
/// Global guard bucket (GCRA TAT) per port slot, shared by all CPUs.
#[map]
static GLOBAL_GUARD: Array<u64> = Array::with_max_entries(MAX_PORTS as u32, 0);
/// `STORM[0] != 0` while a bounce storm is on (set by the controller).
#[map]
static STORM: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
/// The port-25 payload being scanned and the scan's result, per CPU.
///
/// Kept in a map value rather than on the stack: the payload is too large for the BPF stack, and
/// the verifier treats map memory as opaque, so a `bpf_loop` callback that bumps `found` reaches a
/// fixed point at once instead of being re-verified for every possible count.
#[repr(C)]
struct ScanArea {
    len: u64,
    found: u64,
    bytes: [u8; SCAN_WINDOW],
}

#[map]
static SCAN_BUF: PerCpuArray<ScanArea> = PerCpuArray::with_max_entries(1, 0);
/// How to read the boot clock (`smtp_xdp_common::clock_slot`), published by whoever sets up the
/// maps and kept current by the controller's sweeps: see `now`.
#[map]
static CLOCK: Array<u64> = Array::with_max_entries(clock_slot::COUNT, 0);
/// Written by the controller only (layout version and attachment facts).
#[map]
static META: Array<Meta> = Array::with_max_entries(1, 0);
/// Trusted relays (DNS allowlist answers), written by the controller; read only when a source
/// is over a limit.
#[map]
static TRUSTED: HashMap<SourceKey, Trust> =
    HashMap::with_max_entries(MAX_TRUSTED, BPF_F_NO_PREALLOC);

/// One BPF load of `$width` (`u8`, `u16`, `u32`) at `$at` bytes past the address `$p` (packet or map
/// memory), zero-extended to a u64: a field read at its own width, which LLVM's BPF backend does
/// not emit for memory it cannot prove aligned.
macro_rules! bpf_load {
    ($width:literal, $p:expr, $at:expr) => {{
        let v: u64;
        // SAFETY: every caller's `$p + $at` is inside a checked packet window or the port table;
        // a load has no other effect.
        unsafe {
            asm!(concat!("{v} = *(", $width, " *)({p} + {o})"), v = lateout(reg) v, p = in(reg) $p,
                 o = const $at, options(pure, readonly, nostack, preserves_flags));
        }
        v
    }};
}

/// The program's port table, as the parser consults it.
struct PortTable;

impl parse::Ports for PortTable {
    #[inline(always)]
    fn verdict_ahead(&self) {
        // SAFETY: an empty instruction sequence; being opaque to LLVM, it ends the block the
        // fast passes share with the verdict's path, so nothing for the verdict is done before.
        unsafe { asm!("", options(nomem, nostack, preserves_flags)) };
    }

    #[inline(always)]
    fn entry(&self, port: u16) -> u32 {
        // A u16 index into a table of 2^16 bytes; a byte read cannot tear. An inline load, not
        // `read_volatile`: LLVM would test the byte's bit 7 (`SCAN_BOUNCES`) by sign extension.
        let at = core::ptr::addr_of!(PORT_TABLE)
            .cast::<u8>()
            .wrapping_add(port as usize);
        let v = bpf_load!("u8", at, 0);
        // SAFETY: a byte load zero-extends.
        unsafe { core::hint::assert_unchecked(v <= u8::MAX as u64) };
        v as u32
    }
}

/// The frame in packet memory. `window` is the program's one bounds check on packet reads.
struct Packet<'a> {
    ctx: &'a XdpContext,
}

/// `N` bytes of packet memory at `at`, inside the packet (checked by [`Packet::window`]).
///
/// Fields are read with inline BPF loads of their own width at a constant offset: LLVM's BPF
/// backend splits every load it cannot prove aligned into byte loads, shifts and ors, while the
/// verifier checks packet alignment only where the CPU needs it (or under
/// `BPF_F_STRICT_ALIGNMENT`, which the program is not loaded with). An established segment's
/// pass took 101 BPF instructions with the byte-wise parse, 53 now (docs/benchmarks.md,
/// issue 17).
struct PacketWindow<const N: usize> {
    at: usize,
}

impl Frame for Packet<'_> {
    type Window<const N: usize> = PacketWindow<N>;

    #[inline(always)]
    fn window<const N: usize>(&self, offset: usize) -> Option<PacketWindow<N>> {
        let at = self.ctx.data() + offset;
        if at + N > self.ctx.data_end() {
            return None;
        }
        Some(PacketWindow { at })
    }
}

impl<const N: usize> parse::Window<N> for PacketWindow<N> {
    #[inline(always)]
    fn byte<const AT: usize>(&self) -> u8 {
        const { assert!(AT < N) };
        let v = bpf_load!("u8", self.at, AT);
        // SAFETY: a byte load zero-extends; telling LLVM spares the mask it would add.
        unsafe { core::hint::assert_unchecked(v <= u8::MAX as u64) };
        v as u8
    }

    #[inline(always)]
    fn raw16<const AT: usize>(&self) -> u16 {
        const { assert!(AT + 2 <= N) };
        let v = bpf_load!("u16", self.at, AT);
        // SAFETY: a 16-bit load zero-extends.
        unsafe { core::hint::assert_unchecked(v <= u16::MAX as u64) };
        v as u16
    }

    #[inline(always)]
    fn bytes4<const AT: usize>(&self) -> [u8; 4] {
        const { assert!(AT + 4 <= N) };
        // The load is little-endian, like the target: memory order is kept.
        (bpf_load!("u32", self.at, AT) as u32).to_le_bytes()
    }
}

#[xdp]
pub fn smtp_xdp(ctx: XdpContext) -> u32 {
    let frame = Packet { ctx: &ctx };
    let headers = match parse::headers(&frame, &PortTable) {
        Ok(h) => h,
        // The passes decided by the parse count and return here, on their own: merged with the
        // verdicts below, the counter and the action would be kept live across the slow path's
        // calls, in registers the parse then lacks (docs/benchmarks.md, issue 17).
        Err(Skip::NotTcp | Skip::NotProtected) => return pass(Counter::PassNotSmtp),
        // Established traffic with nothing to scan never needs the policy nor the source.
        Err(Skip::NothingToScan) => return pass(Counter::PassSmtpOther),
        Err(Skip::Unparsed) => return pass(Counter::PassUnparsed),
    };
    let (counter, action) = classify(&ctx, &frame, &headers);
    count(counter);
    action
}

#[inline(always)]
fn pass(counter: Counter) -> u32 {
    count(counter);
    xdp_action::XDP_PASS
}

/// A program that passes everything: the baseline the benchmarks compare against.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// A program that drops everything: the floor the driver-path benchmark compares against.
#[xdp]
pub fn xdp_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The verdict on a segment the parse left to decide: a new connection, or a payload to scan.
#[inline(always)]
fn classify(ctx: &XdpContext, frame: &Packet, headers: &parse::Headers) -> (Counter, u32) {
    let port = headers.port;
    let syn = headers.is_new_connection();
    let Ok(seg) = headers.segment(frame) else {
        return (Counter::PassUnparsed, xdp_action::XDP_PASS);
    };
    let Some(policy) = POLICY.get(live(select::POLICY)) else {
        return (Counter::NoPolicy, xdp_action::XDP_PASS);
    };
    if syn {
        return on_syn(ctx, &seg, port, policy);
    }
    on_payload(ctx, &seg, policy);
    (Counter::PassSmtpOther, xdp_action::XDP_PASS)
}

/// Which copy (0 or 1) of a double-buffered map is live.
#[inline(always)]
fn live(what: u32) -> u32 {
    match SELECT.get(what) {
        Some(&1) => 1,
        _ => 0,
    }
}

/// Which tries hold entries; all of them if the word is unreadable (never skip by mistake).
#[inline(always)]
fn present_tries() -> u32 {
    match SELECT.get(select::PRESENT) {
        Some(&p) => p,
        None => u32::MAX,
    }
}

/// The boot clock (CLOCK_BOOTTIME, the clock of every timestamp in the maps) at tick resolution:
/// jiffies scaled and offset as calibrated by the controller, or before that the coarse monotonic
/// clock plus the suspend offset (`smtp_xdp_common::clock_slot`). `bpf_ktime_get_boot_ns` would
/// be exact to the nanosecond, but reads the TSC with a serialising instruction that cost a fifth
/// to a third of a SYN verdict, and the coarse clock's helper call 2 ns more than the jiffies load
/// the verifier inlines (docs/benchmarks.md, issue 17). Tick resolution trails by at most a tick,
/// and an offset not yet refreshed after a resume only trails more: every decision errs strict
/// (a bucket refills, a ban ends, at most that much late).
#[inline(always)]
fn now() -> u64 {
    let per_jiffy = clock_word(clock_slot::NS_PER_JIFFY);
    if per_jiffy != 0 {
        // SAFETY: a helper without arguments.
        let jiffies = unsafe { bpf_jiffies64() };
        return jiffies
            .wrapping_mul(per_jiffy)
            .wrapping_add(clock_word(clock_slot::JIFFY_BASE));
    }
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }.wrapping_add(clock_word(clock_slot::SUSPENDED))
}

#[inline(always)]
fn clock_word(slot: u32) -> u64 {
    match CLOCK.get(slot) {
        Some(&w) => w,
        None => 0,
    }
}

/// Samples the coarse clock, jiffies and the coarse clock again into `CLOCK`, for the
/// controller's calibration (run with `BPF_PROG_TEST_RUN`, never attached).
#[xdp]
pub fn clock_sample(_ctx: XdpContext) -> u32 {
    // SAFETY: helpers without arguments, called in this order (left to right).
    let (before, jiffies, after) = unsafe {
        (
            bpf_ktime_get_coarse_ns(),
            bpf_jiffies64(),
            bpf_ktime_get_coarse_ns(),
        )
    };
    let at = clock_slot::SAMPLE;
    for (slot, v) in [(at, before), (at + 1, jiffies), (at + 2, after)] {
        if let Some(p) = CLOCK.get_ptr_mut(slot) {
            // SAFETY: a slot of the array that only this program writes.
            unsafe { *p = v };
        }
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot; XDP runs with preemption off, so no other writer.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value; BPF_ATOMIC add on it is what other CPUs see.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, v) };
}

#[inline(always)]
fn compare_and_swap(p: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: `p` points into a map value shared by all CPUs.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(p, old, new).1
    }
}

/// How often a GCRA update retries after losing a race with another CPU. Every lost race means
/// another CPU's update landed, so a few are plenty; past them the SYN is treated as over the
/// limit (never admitting more than the bucket allows).
const CAS_RETRIES: u32 = 8;

/// Charges one event to the GCRA bucket at `tat`, exactly, against concurrent CPUs.
#[inline(always)]
fn gcra_shared(tat: *mut u64, gcra: &Gcra, now: u64) -> bool {
    let mut tries = 0;
    while tries < CAS_RETRIES {
        // SAFETY: `tat` points into a map value.
        let old = unsafe { read_volatile(tat) };
        match gcra.admit(old, now) {
            None => return false,
            Some(new) => {
                if compare_and_swap(tat, old, new) {
                    return true;
                }
            }
        }
        tries += 1;
    }
    false
}

/// The kernel's state for one source: the maps, looked up lazily.
struct KernelEnv<'a> {
    ctx: &'a XdpContext,
    seg: &'a Segment,
    /// `present` bits: which tries hold entries.
    present: u32,
    key: SourceKey,
    slot: u32,
    /// The source's state once `source_rate` found or created it (null before).
    st: *mut SourceState,
}

impl KernelEnv<'_> {
    #[inline(always)]
    fn v4(&self) -> Key<[u8; 4]> {
        let s = &self.seg.src;
        Key::new(32, [s[0], s[1], s[2], s[3]])
    }

    #[inline(always)]
    fn v6(&self) -> Key<[u8; 16]> {
        Key::new(128, self.seg.src)
    }

    #[inline(always)]
    fn is_v4(&self) -> bool {
        self.seg.family == FAMILY_V4
    }

    /// The source's state, created on first sight when `create`.
    #[inline(always)]
    fn state(&self, create: bool) -> Option<*mut SourceState> {
        if let Some(p) = SOURCES.get_ptr_mut(self.key) {
            return Some(p);
        }
        if !create {
            return None;
        }
        // An error here is mostly EEXIST: another CPU created the entry first, use theirs.
        if SOURCES
            .insert(self.key, SourceState::default(), BPF_NOEXIST as u64)
            .is_ok()
        {
            count(Counter::SourcesCreated);
        }
        let p = SOURCES.get_ptr_mut(self.key);
        if p.is_none() {
            count(Counter::SourceInsertFailed);
        }
        p
    }

    /// The source's bounce state, created on first sight when `create`.
    #[inline(always)]
    fn bounce_state(&self, create: bool) -> Option<*mut BounceState> {
        if let Some(p) = BOUNCERS.get_ptr_mut(self.key) {
            return Some(p);
        }
        if !create {
            return None;
        }
        // As for `state`: an error is mostly another CPU's insert winning.
        let _ = BOUNCERS.insert(self.key, BounceState::default(), BPF_NOEXIST as u64);
        let p = BOUNCERS.get_ptr_mut(self.key);
        if p.is_none() {
            count(Counter::SourceInsertFailed);
        }
        p
    }
}

impl BanEnv for KernelEnv<'_> {
    #[inline(always)]
    fn ban_entry(&mut self) -> Option<Ban> {
        // No key of the penalty box hashes to this slot: no ban, and no lookup.
        if BAN_FILTER
            .get(smtp_xdp_common::ban_filter_slot(&self.key))
            .is_some_and(|&n| n == 0)
        {
            return None;
        }
        // SAFETY: copied out at once; a concurrent update can at worst give a stale copy.
        unsafe { BANS.get(self.key).copied() }
    }

    #[inline(always)]
    fn store_ban(&mut self, ban: &Ban) -> bool {
        let stored = store_ban(&self.key, ban);
        if !stored {
            // Rare (the penalty box is full): worth a log line, never on the normal path.
            aya_log_ebpf::warn!(
                self.ctx,
                "penalty box full: a ban was not stored (raise --max-bans)"
            );
        }
        stored
    }

    #[inline(always)]
    fn event(&mut self, kind: u32, ban: Option<&Ban>, now: u64) {
        let ev = Event::about(kind, self.key, self.seg.src, now, ban, |kind| {
            if kind == event_kind::BOUNCE_LIMIT {
                // SAFETY: `b` points into the BOUNCERS value for this key.
                self.bounce_state(false)
                    .map_or(0, |b| unsafe { (*b).bounces } as u64)
            } else {
                // SAFETY: `st` points into the SOURCES value for this key.
                self.state(false)
                    .map_or(0, |st| unsafe { (*st).syns } as u64)
            }
        });
        if EVENTS.output::<Event>(&ev, 0).is_err() {
            count(Counter::EventsLost);
        }
    }

    #[inline(always)]
    fn count(&mut self, counter: Counter) {
        count(counter);
    }

    #[inline(always)]
    fn trusted(&mut self, now: u64) -> bool {
        if self.present & present::TRUSTED == 0 {
            return false;
        }
        // SAFETY: copied out at once.
        unsafe { TRUSTED.get(self.key) }.is_some_and(|t| t.holds(now))
    }
}

impl SynEnv for KernelEnv<'_> {
    #[inline(always)]
    fn allowlisted(&mut self) -> bool {
        if self.present & present::ALLOW == 0 {
            return false;
        }
        let b = live(select::ALLOW) == 1;
        match (self.is_v4(), b) {
            (true, false) => ALLOW_V4_A.get(self.v4()).is_some(),
            (true, true) => ALLOW_V4_B.get(self.v4()).is_some(),
            (false, false) => ALLOW_V6_A.get(self.v6()).is_some(),
            (false, true) => ALLOW_V6_B.get(self.v6()).is_some(),
        }
    }

    #[inline(always)]
    fn denylisted(&mut self) -> bool {
        if self.present & present::DENY == 0 {
            return false;
        }
        let b = live(select::DENY) == 1;
        match (self.is_v4(), b) {
            (true, false) => DENY_V4_A.get(self.v4()).is_some(),
            (true, true) => DENY_V4_B.get(self.v4()).is_some(),
            (false, false) => DENY_V6_A.get(self.v6()).is_some(),
            (false, true) => DENY_V6_B.get(self.v6()).is_some(),
        }
    }

    #[inline(always)]
    fn net_banned(&mut self, now: u64) -> bool {
        if self.present & present::BANNED_NETS == 0 {
            return false;
        }
        let ban = if self.is_v4() {
            BANNED_NETS_V4.get(self.v4())
        } else {
            BANNED_NETS_V6.get(self.v6())
        };
        ban.is_some_and(|b| bans::is_active(b, now))
    }

    #[inline(always)]
    fn crowdsec_banned(&mut self, now: u64) -> bool {
        if self.present & present::CROWDSEC == 0 {
            return false;
        }
        let ban = if self.is_v4() {
            CROWDSEC_V4.get(self.v4())
        } else {
            CROWDSEC_V6.get(self.v6())
        };
        ban.is_some_and(|b| bans::is_active(b, now))
    }

    #[inline(always)]
    fn source_rate(&mut self, policy: &Policy, now: u64) -> RateOutcome {
        let Some(st) = self.state(true) else {
            return RateOutcome::Untracked;
        };
        self.st = st;
        // SAFETY: `st` points into the SOURCES value for this key. The bucket is updated by
        // compare-and-swap; statistics and flags by plain stores (a race there can only lose a
        // count, or mark a source one SYN late, never admit more than the bucket allows).
        unsafe {
            let key = self.key;
            let gcra = decide::syn_limit(policy, &mut *st, storm_on(), || {
                BOUNCERS.get_ptr(key).is_some()
            });
            (*st).count_syn();
            if gcra_shared(&raw mut (*st).syn_tat, gcra, now) {
                return RateOutcome::Admitted;
            }
        }
        RateOutcome::OverRate
    }

    #[inline(always)]
    fn record_rate_drop(&mut self, policy: &Policy, now: u64) -> bans::Offence {
        let st = self.st;
        if st.is_null() {
            return bans::Offence {
                first_drop: false,
                ban: false,
            };
        }
        // SAFETY: `st` points into the SOURCES value `source_rate` found for this key, within
        // this program run. The offence window takes plain stores (a race there can only shift
        // a ban by one drop).
        unsafe {
            (*st).count_drop();
            bans::record_rate_drop(&mut *st, now, policy)
        }
    }

    #[inline(always)]
    fn global_admit(&mut self, gcra: &Gcra, now: u64) -> bool {
        match GLOBAL_GUARD.get_ptr_mut(self.slot) {
            Some(tat) => gcra_shared(tat, gcra, now),
            None => true,
        }
    }
}

/// Stores a penalty-box entry, keeping `BAN_FILTER` an upper bound of the keys per slot (the
/// protocol is in `smtp_xdp_common::BAN_FILTER_SLOTS`). Two rounds at most: past them, one
/// count too many (a lookup too many for the slot, never a missed ban).
#[inline(always)]
fn store_ban(key: &SourceKey, ban: &Ban) -> bool {
    let Some(n) = BAN_FILTER.get_ptr_mut(smtp_xdp_common::ban_filter_slot(key)) else {
        return false;
    };
    let mut round = 0;
    while round < 2 {
        atomic_add(n, 1);
        if BANS.insert(key, ban, BPF_NOEXIST as u64).is_ok() {
            return true;
        }
        atomic_add(n, u64::MAX);
        if BANS.insert(key, ban, BPF_EXIST as u64).is_ok() {
            return true;
        }
        round += 1;
    }
    atomic_add(n, 1);
    if BANS.insert(key, ban, 0).is_ok() {
        return true;
    }
    atomic_add(n, u64::MAX);
    false
}

/// Whether the controller has declared a bounce storm.
#[inline(always)]
fn storm_on() -> bool {
    STORM.get(0).is_some_and(|&s| s != 0)
}

#[inline(always)]
fn source_key(seg: &Segment, policy: &Policy) -> SourceKey {
    let prefix = if seg.family == FAMILY_V4 {
        policy.ipv4_prefix
    } else {
        policy.ipv6_prefix
    };
    SourceKey::masked(seg.family, &seg.src, prefix)
}

#[inline(always)]
fn on_syn(ctx: &XdpContext, seg: &Segment, port: u8, policy: &Policy) -> (Counter, u32) {
    let slot = u32::from(port & port_flags::SLOT_MASK).wrapping_sub(1);
    let mut env = KernelEnv {
        ctx,
        seg,
        present: present_tries(),
        key: source_key(seg, policy),
        slot,
        st: core::ptr::null_mut(),
    };
    let verdict = decide::decide_syn(&mut env, policy, now());
    let (counter, action) = verdict.outcome(policy.dry_run());
    if let Some(stats) = PORT_STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot.
        unsafe {
            match (verdict, action) {
                (SynVerdict::Admitted | SynVerdict::Allowlisted | SynVerdict::Trusted, _) => {
                    (*stats).syn_admitted += 1
                }
                (_, xdp_action::XDP_DROP) => (*stats).syn_dropped += 1,
                _ => (*stats).syn_would_drop += 1,
            }
        }
    }
    (counter, action)
}

/// One `bpf_loop` step: null-sender commands after line feeds in 8-byte word `index`.
extern "C" fn scan_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(area) = SCAN_BUF.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the per-CPU scan area, filled by `on_payload` on this CPU just before.
    unsafe {
        (*area).found += bounce::count_after_newlines_in_word(
            &(*area).bytes,
            (*area).len as usize,
            index as usize,
        ) as u64;
    }
    0
}

/// Port-25 client payload: count null-sender commands, and ban a source over its bounce limit
/// (with BATV on, only count: the policy service judges each bounce by its recipient's tag).
#[inline(always)]
fn on_payload(ctx: &XdpContext, seg: &Segment, policy: &Policy) {
    let len = seg.payload_len;
    // The caller passed no empty payload, but the verifier cannot know it of this copy.
    if len == 0 {
        return;
    }
    if len > SCAN_WINDOW {
        count(Counter::ScanSkipped);
        return;
    }
    let Some(area) = SCAN_BUF.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `bytes` holds SCAN_WINDOW bytes and 0 < len <= SCAN_WINDOW; the helper checks the
    // packet bounds itself and fails on a truncated frame.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.as_ptr().cast(),
            seg.payload_offset as u32,
            (&raw mut (*area).bytes).cast(),
            len as u32,
        )
    };
    if loaded != 0 {
        return;
    }
    // SAFETY: the per-CPU scan area; `scan_step` is a static function. `found` is written and
    // read back with volatile accesses: LLVM cannot see that the helper's callback updates it,
    // and would otherwise forward the value stored before the call.
    let found = unsafe {
        (*area).len = len as u64;
        core::ptr::write_volatile(&raw mut (*area).found, 0);
        bpf_loop(
            len.div_ceil(8) as u32,
            scan_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        let after_newlines = core::ptr::read_volatile(&raw const (*area).found);
        after_newlines + bounce::null_sender_at(&(*area).bytes, len, 0) as u64
    };
    if found == 0 {
        return;
    }
    let found = if found > 64 { 64 } else { found as u32 };
    // Every bounce counts towards the totals (and storm detection); allowlisted sources (a backup
    // MX relaying bounces, say) are never charged or banned for them.
    if let Some(c) = COUNTERS.get_ptr_mut(Counter::BouncesKernel as u32) {
        // SAFETY: a per-CPU slot.
        unsafe { *c += found as u64 };
    }
    let mut env = KernelEnv {
        ctx,
        seg,
        present: present_tries(),
        key: source_key(seg, policy),
        slot: 0,
        st: core::ptr::null_mut(),
    };
    if env.allowlisted() {
        return;
    }
    let Some(st) = env.bounce_state(true) else {
        return;
    };
    let now = now();
    // SAFETY: `st` points into the BOUNCERS value for this key.
    let verdict = unsafe { decide::charge_bounces(&mut *st, policy, storm_on(), found, now) };
    if verdict == BounceVerdict::OverLimit {
        decide::bounce_over_limit(&mut env, policy, now);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
