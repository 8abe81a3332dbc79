//! Loading the XDP program into the kernel and attaching it to an interface.

use std::path::Path;

use aya::{
    programs::{links::FdLink, ProgramError, TestRun as _, Xdp, XdpMode as AyaXdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use smtp_xdp_common::names;
use thiserror::Error;

use crate::config::XdpMode;

/// The ELF object of smtp-xdp-ebpf, aligned for aya's parser.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/smtp-xdp"));

/// The limiter program's name in the object.
pub const PROGRAM: &str = "smtp_xdp";
/// A program that passes everything, loaded by the benchmarks as a baseline.
pub const PASS_PROGRAM: &str = "xdp_pass";
/// A program that drops everything: the floor of the benchmarks' driver path.
pub const DROP_PROGRAM: &str = "xdp_drop";
/// The clock sampler [`calibrate_clock`] runs (never attached).
pub const CLOCK_PROGRAM: &str = "clock_sample";

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot create the program's maps: {}", chain(.0))]
    Object(EbpfError),
    #[error("the kernel refused program {name}: {}", chain(.error))]
    Program {
        name: &'static str,
        error: ProgramError,
    },
    #[error("program {0} is missing from the object")]
    Missing(&'static str),
    #[error("calibrating the program's clock: {0}")]
    Clock(crate::maps::MapsError),
    #[error("XDP link: {0}")]
    Link(aya::programs::links::LinkError),
    #[error("cannot attach XDP to {iface} in {mode} mode: {}", chain(.error))]
    Attach {
        iface: String,
        mode: &'static str,
        error: ProgramError,
    },
}

/// An error and its causes in one line (aya's errors keep the OS error as a source).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

// Not `#[from]`: that would also make the link error the `source`, and `{:#}` would print the
// cause twice (the message already includes it).
impl From<aya::programs::links::LinkError> for LoadError {
    fn from(e: aya::programs::links::LinkError) -> Self {
        LoadError::Link(e)
    }
}

/// How to load.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions<'a> {
    /// Pin (or adopt) every map under this directory.
    pub pin_dir: Option<&'a Path>,
    pub max_sources: u32,
    pub max_bans: u32,
    /// Capacity of each CrowdSec decision trie.
    pub max_decisions: u32,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            pin_dir: None,
            max_sources: smtp_xdp_common::DEFAULT_MAX_SOURCES,
            max_bans: smtp_xdp_common::DEFAULT_MAX_BANS,
            max_decisions: smtp_xdp_common::DEFAULT_MAX_DECISIONS,
        }
    }
}

/// Entries of `BOUNCERS` for a per-source table of `max_sources`: a sixteenth, at least 64.
pub fn bouncers_capacity(max_sources: u32) -> u32 {
    (max_sources / smtp_xdp_common::SOURCES_PER_BOUNCER).max(smtp_xdp_common::MIN_BOUNCERS)
}

/// Creates (or adopts pinned) maps and loads `programs` through the verifier.
pub fn load(opts: &LoadOptions<'_>, programs: &[&'static str]) -> Result<Ebpf, LoadError> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(names::SOURCES, opts.max_sources)
        .map_max_entries(names::BOUNCERS, bouncers_capacity(opts.max_sources))
        .map_max_entries(names::BANS, opts.max_bans)
        .map_max_entries(names::CROWDSEC_V4, opts.max_decisions)
        .map_max_entries(names::CROWDSEC_V6, opts.max_decisions);
    let paths: Vec<_> = opts
        .pin_dir
        .map(|dir| names::PINNED.iter().map(|n| (*n, dir.join(n))).collect())
        .unwrap_or_default();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
    for &name in programs {
        xdp(&mut ebpf, name)?
            .load()
            .map_err(|source| LoadError::Program {
                name,
                error: source,
            })?;
    }
    Ok(ebpf)
}

/// How many sampler runs [`calibrate_clock`] tries: a run takes about a microsecond, so one
/// straddles a tick about once in a thousand, and 32 in a row do not.
const CLOCK_SAMPLES: usize = 32;

/// The clock the program was left reading by [`calibrate_clock`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClockSource {
    Jiffies,
    /// The coarse clock (the same time, a helper call more per verdict), and why.
    Coarse {
        why: String,
    },
}

/// Switches the limiter's clock to jiffies (one inlined load per verdict instead of a helper
/// call), calibrated from the sampler `CLOCK_PROGRAM` (loaded in `ebpf`): a run that saw the
/// same coarse time before and after reading jiffies pins jiffy `j` to coarse time `c`, the
/// time of the tick that made it `j`, so `c - j * tick` is CLOCK_MONOTONIC at jiffy 0, and every
/// later jiffy is exactly one tick of it. A run three ticks later checks the result against the
/// coarse clock. If the sampler cannot run, no run was clean or the check fails, the program is
/// left on the coarse clock: an optimisation that does not calibrate never stops protection.
/// Only a map that cannot be written is an error.
pub fn calibrate_clock(
    ebpf: &mut Ebpf,
    maps: &mut crate::maps::Maps,
) -> Result<ClockSource, LoadError> {
    let why = match jiffy_epoch(ebpf, maps) {
        Ok(Ok(epoch)) => {
            let tick = crate::clock::tick().as_nanos() as u64;
            maps.set_jiffies_clock(epoch, tick)
                .map_err(LoadError::Clock)?;
            return Ok(ClockSource::Jiffies);
        }
        Ok(Err(why)) => why.to_string(),
        Err(LoadError::Clock(e)) => return Err(LoadError::Clock(e)),
        Err(e) => format!("the sampler cannot run: {e}"),
    };
    maps.set_coarse_clock().map_err(LoadError::Clock)?;
    Ok(ClockSource::Coarse { why })
}

/// CLOCK_MONOTONIC at jiffy 0, checked, or why there is none.
fn jiffy_epoch(
    ebpf: &mut Ebpf,
    maps: &crate::maps::Maps,
) -> Result<Result<u64, &'static str>, LoadError> {
    let tick = crate::clock::tick().as_nanos() as u64;
    if tick == 0 {
        return Ok(Err("the kernel reports no tick length"));
    }
    let prog = xdp(ebpf, CLOCK_PROGRAM)?;
    let frame = [0u8; 64];
    // A clean sample: (coarse time, jiffies) with no tick between the two coarse readings.
    let sample = || -> Result<Option<(u64, u64)>, LoadError> {
        prog.test_run(aya::programs::TestRunOptions {
            data_in: Some(&frame),
            ..Default::default()
        })
        .map_err(|error| LoadError::Program {
            name: CLOCK_PROGRAM,
            error,
        })?;
        let [before, jiffies, after] = maps.clock_sample().map_err(LoadError::Clock)?;
        Ok((before == after && before != 0).then_some((before, jiffies)))
    };
    let clean = || -> Result<Option<(u64, u64)>, LoadError> {
        for _ in 0..CLOCK_SAMPLES {
            if let Some(s) = sample()? {
                return Ok(Some(s));
            }
        }
        Ok(None)
    };
    let Some((coarse, jiffies)) = clean()? else {
        return Ok(Err("every sample straddled a tick"));
    };
    let epoch = coarse.wrapping_sub(jiffies.wrapping_mul(tick));
    // The check: a clean sample three ticks later, read through the epoch, lands within a tick
    // and a half of its coarse time (a jiffy read just before its tick's timekeeping update
    // reads a tick ahead of the coarse clock, and then the epoch is a tick low: strict, and
    // allowed). Three ticks apart, a wrong tick length would miss by more.
    std::thread::sleep(std::time::Duration::from_nanos(3 * tick));
    let Some((coarse, jiffies)) = clean()? else {
        return Ok(Err("every check sample straddled a tick"));
    };
    let lead = jiffies
        .wrapping_mul(tick)
        .wrapping_add(epoch)
        .wrapping_sub(coarse) as i64;
    let slack = (tick + tick / 2) as i64;
    if !(-slack..=slack).contains(&lead) {
        return Ok(Err("jiffies do not advance one tick each"));
    }
    Ok(Ok(epoch))
}

/// The XDP program `name` of a loaded object.
pub fn xdp<'e>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut Xdp, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::Missing(name))?
        .try_into()
        .map_err(|source| LoadError::Program {
            name,
            error: source,
        })
}

/// The XDP mode an attachment got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Native,
    Generic,
}

impl Attached {
    pub fn name(self) -> &'static str {
        match self {
            Attached::Native => "native",
            Attached::Generic => "skb",
        }
    }

    /// `Meta::xdp_mode` encoding.
    pub fn code(self) -> u32 {
        match self {
            Attached::Native => 1,
            Attached::Generic => 2,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Attached::Native),
            2 => Some(Attached::Generic),
            _ => None,
        }
    }
}

/// Attaches `prog` to `iface` with a BPF link and returns the link (owned: dropping it detaches,
/// pinning it keeps the program attached after the process exits).
///
/// `Auto` tries native mode first and falls back to generic mode only after the driver refused
/// native; the caller logs the mode obtained, so the fallback is never silent.
pub fn attach(prog: &mut Xdp, iface: &str, mode: XdpMode) -> Result<(FdLink, Attached), LoadError> {
    let tries: &[(AyaXdpMode, Attached)] = match mode {
        XdpMode::Native => &[(AyaXdpMode::Driver, Attached::Native)],
        XdpMode::Skb => &[(AyaXdpMode::Skb, Attached::Generic)],
        XdpMode::Auto => &[
            (AyaXdpMode::Driver, Attached::Native),
            (AyaXdpMode::Skb, Attached::Generic),
        ],
    };
    let mut last = None;
    for &(flags, got) in tries {
        match prog.attach(iface, flags) {
            Ok(id) => {
                let link = prog.take_link(id).map_err(|source| LoadError::Attach {
                    iface: iface.into(),
                    mode: got.name(),
                    error: source,
                })?;
                let fd = FdLink::try_from(link)?;
                return Ok((fd, got));
            }
            Err(source) => {
                if matches!(source, ProgramError::UnknownInterface { .. }) {
                    return Err(LoadError::Attach {
                        iface: iface.into(),
                        mode: got.name(),
                        error: source,
                    });
                }
                last = Some(LoadError::Attach {
                    iface: iface.into(),
                    mode: got.name(),
                    error: source,
                });
            }
        }
    }
    Err(last.expect("at least one mode is tried"))
}

/// Atomically replaces the program behind an existing (pinned) XDP link with `prog`: the
/// interface is never without a program during an upgrade or a restart.
pub fn replace(prog: &mut Xdp, link: FdLink) -> Result<FdLink, LoadError> {
    let err = |source: ProgramError| LoadError::Attach {
        iface: "(pinned link)".into(),
        mode: "replace",
        error: source,
    };
    let xdp_link = aya::programs::xdp::XdpLink::try_from(link)?;
    let id = prog.attach_to_link(xdp_link).map_err(err)?;
    let link = prog.take_link(id).map_err(err)?;
    Ok(FdLink::try_from(link)?)
}
