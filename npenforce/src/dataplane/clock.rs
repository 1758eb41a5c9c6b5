//! The tick rate of the kernel's `jiffies`, the clock the programs keep time with.
//!
//! The programs read `jiffies` because the verifier turns `bpf_jiffies64` into one load,
//! where every other clock is a helper call that costs more than the rest of an established
//! flow's path. Their timeouts are in seconds, so they need ticks per second, the kernel's
//! `CONFIG_HZ`, which no interface reports. It is measured: a two-instruction program that
//! returns `jiffies` is run with `BPF_PROG_TEST_RUN` at two tick edges about 40 ms apart.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_FUNC_JIFFIES64: i32 = 118;

/// Tick rates kernels are built with; a measurement window that holds one of them is taken
/// as it.
const KNOWN_RATES: [u32; 5] = [100, 250, 300, 1000, 1024];
/// Time between the two tick edges the rate is measured over.
const SPAN: Duration = Duration::from_millis(40);
/// Measurements before settling for the narrowest window seen: each takes about 50 ms, and
/// on a busy machine (other tenants, threads spinning on every CPU) many in a row can be
/// disturbed.
const ATTEMPTS: usize = 40;

/// Ticks per second of `jiffies`, measured once per process. Callers that come while it is
/// being measured wait for that measurement.
pub fn jiffies_per_second() -> io::Result<u32> {
    static RATE: Mutex<Option<u32>> = Mutex::new(None);
    let mut rate = RATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(rate) = *rate {
        return Ok(rate);
    }
    let measured = measure()?;
    *rate = Some(measured);
    Ok(measured)
}

fn measure() -> io::Result<u32> {
    let program = load_jiffies_program()?;
    let read = || run(&program);
    // A busy machine can deschedule us between reads, which widens the window in which an
    // edge is known to have happened; such a measurement is repeated.
    let mut narrowest: Option<(f64, f64)> = None;
    for _ in 0..ATTEMPTS {
        let first = next_edge(&read)?;
        std::thread::sleep(SPAN);
        let last = next_edge(&read)?;
        let ticks = last.value.wrapping_sub(first.value) as f64;
        let longest = last.after.duration_since(first.before).as_secs_f64();
        let shortest = last
            .before
            .saturating_duration_since(first.after)
            .as_secs_f64();
        if ticks < 1.0 || shortest <= 0.0 {
            continue;
        }
        let (low, high) = (ticks / longest, ticks / shortest);
        if let Some(rate) = rate_between(low, high) {
            return Ok(rate);
        }
        if narrowest.is_none_or(|(l, h)| high / low < h / l) {
            narrowest = Some((low, high));
        }
    }
    // Timeouts a few percent off are harmless; not starting is not.
    let (low, high) = narrowest.ok_or_else(|| io::Error::other("jiffies did not advance"))?;
    let rate = best_guess(low, high);
    tracing::warn!(
        low,
        high,
        rate,
        "the kernel's tick rate could not be measured precisely (busy machine); conntrack \
         timeouts may be a few percent off"
    );
    Ok(rate)
}

/// The rate to use when no measurement was precise: a known rate inside the window `low` to
/// `high` (the one nearest its middle), else a known rate within 10% of the middle, else the
/// middle itself.
fn best_guess(low: f64, high: f64) -> u32 {
    let middle = (low + high) / 2.0;
    let inside = |rate: &u32| (low * 0.995..=high * 1.005).contains(&(*rate as f64));
    nearest(middle, KNOWN_RATES.iter().copied().filter(inside))
        .or_else(|| {
            nearest(middle, KNOWN_RATES.iter().copied())
                .filter(|rate| (*rate as f64 - middle).abs() <= middle * 0.1)
        })
        .unwrap_or(middle.round() as u32)
}

/// The rate nearest `middle` (the first of equally near ones).
fn nearest(middle: f64, rates: impl Iterator<Item = u32>) -> Option<u32> {
    rates.min_by(|a, b| {
        (*a as f64 - middle)
            .abs()
            .total_cmp(&(*b as f64 - middle).abs())
    })
}

/// An edge of `jiffies`: its new value, and the instants between which it happened.
struct Edge {
    value: u32,
    before: Instant,
    after: Instant,
}

/// Waits for `jiffies` to change.
fn next_edge(read: &impl Fn() -> io::Result<u32>) -> io::Result<Edge> {
    let mut before = Instant::now();
    let old = read()?;
    // A tick is at most 10 ms; a second without one means the clock is not running.
    let give_up = before + Duration::from_secs(1);
    loop {
        let start = Instant::now();
        let now = read()?;
        let after = Instant::now();
        if now != old {
            return Ok(Edge {
                value: now,
                before,
                after,
            });
        }
        if after > give_up {
            return Err(io::Error::other("jiffies did not advance within a second"));
        }
        before = start;
    }
}

/// The tick rate, given that it lies between `low` and `high`: the one known rate in that
/// range, or the middle of a range narrow enough (1%) to read a rate from directly.
fn rate_between(low: f64, high: f64) -> Option<u32> {
    let fits: Vec<u32> = KNOWN_RATES
        .iter()
        .copied()
        .filter(|rate| (low * 0.995..=high * 1.005).contains(&(*rate as f64)))
        .collect();
    match fits.as_slice() {
        [rate] => Some(*rate),
        [] if high - low <= low * 0.01 => Some(((low + high) / 2.0).round() as u32),
        _ => None,
    }
}

/// One instruction as the kernel reads it: opcode, registers (dst low nibble, src high),
/// offset, immediate.
fn insn(code: u8, regs: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut raw = [0u8; 8];
    raw[0] = code;
    raw[1] = regs;
    raw[2..4].copy_from_slice(&off.to_le_bytes());
    raw[4..8].copy_from_slice(&imm.to_le_bytes());
    raw
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

#[repr(C)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised prefix of `union bpf_attr` for `cmd`, and its
    // size is passed along, so the kernel reads and writes only inside it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `r0 = bpf_jiffies64(); return r0;`
fn load_jiffies_program() -> io::Result<OwnedFd> {
    let code: Vec<u8> = [
        insn(0x85, 0, 0, BPF_FUNC_JIFFIES64), // call
        insn(0x95, 0, 0, 0),                  // exit
    ]
    .concat();
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"npe_jiffies_c");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: (code.len() / 8) as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Runs the program once on an empty frame: the low 32 bits of `jiffies`.
fn run(program: &OwnedFd) -> io::Result<u32> {
    let frame = [0u8; 64];
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        retval: 0,
        data_size_in: frame.len() as u32,
        data_size_out: 0,
        data_in: frame.as_ptr() as u64,
        data_out: 0,
        repeat: 1,
        duration: 0,
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_read_only_from_a_narrow_enough_window() {
        assert_eq!(rate_between(249.9, 250.2), Some(250));
        assert_eq!(rate_between(995.0, 1001.0), Some(1000));
        assert_eq!(rate_between(99.8, 100.1), Some(100));
        assert_eq!(
            rate_between(500.1, 500.7),
            Some(500),
            "an unusual rate, read directly"
        );
        assert_eq!(
            rate_between(240.0, 310.0),
            None,
            "250 or 300: measure again"
        );
        assert_eq!(rate_between(400.0, 700.0), None, "too wide");
    }

    #[test]
    fn an_imprecise_window_settles_on_the_nearest_known_rate_inside_it() {
        assert_eq!(
            best_guess(240.0, 310.0),
            250,
            "250 and 300 inside: nearest the middle"
        );
        assert_eq!(best_guess(230.0, 340.0), 300);
        assert_eq!(best_guess(150.0, 400.0), 250, "equally near: the first");
        assert_eq!(best_guess(262.0, 271.0), 250, "none inside, 250 within 10%");
        assert_eq!(best_guess(180.0, 230.0), 205, "none near: the middle");
    }

    #[test]
    fn instructions_encode_little_endian() {
        assert_eq!(insn(0x85, 0, 0, 118), [0x85, 0, 0, 0, 118, 0, 0, 0]);
        assert_eq!(insn(0x95, 0, 0, 0), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }
}
