//! The tick rate of the kernel's `jiffies`, the clock the programs keep time with.
//!
//! The programs read `jiffies` because the verifier turns `bpf_jiffies64` into one load,
//! where every other clock is a helper call that costs more than the rest of an established
//! flow's path. Their timeouts are in seconds, so they need ticks per second, the kernel's
//! `CONFIG_HZ`, which no interface reports. It is measured: a two-instruction program that
//! returns `jiffies` is run with `BPF_PROG_TEST_RUN` at two tick edges about 40 ms apart.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_FUNC_JIFFIES64: i32 = 118;

/// Tick rates kernels are built with; a measurement close to one of them is taken as it.
const KNOWN_RATES: [u32; 5] = [100, 250, 300, 1000, 1024];
/// Time between the two tick edges the rate is measured over.
const SPAN: Duration = Duration::from_millis(40);

/// Ticks per second of `jiffies`, measured once per process.
pub fn jiffies_per_second() -> io::Result<u32> {
    static RATE: OnceLock<u32> = OnceLock::new();
    if let Some(rate) = RATE.get() {
        return Ok(*rate);
    }
    let rate = measure()?;
    Ok(*RATE.get_or_init(|| rate))
}

fn measure() -> io::Result<u32> {
    let program = load_jiffies_program()?;
    let read = || run(&program);
    let (first, start) = next_edge(read()?, &read)?;
    std::thread::sleep(SPAN);
    let (last, end) = next_edge(read()?, &read)?;
    let ticks = last.wrapping_sub(first) as f64;
    let seconds = end.duration_since(start).as_secs_f64();
    if ticks < 1.0 || seconds <= 0.0 {
        return Err(io::Error::other(format!(
            "jiffies did not advance ({ticks} ticks in {seconds:.3} s)"
        )));
    }
    Ok(nearest_rate(ticks / seconds))
}

/// Waits for `jiffies` to move past `current`: the new value and when it was seen.
fn next_edge(current: u32, read: &impl Fn() -> io::Result<u32>) -> io::Result<(u32, Instant)> {
    // A tick is at most 10 ms; a second without one means the clock is not running.
    let give_up = Instant::now() + Duration::from_secs(1);
    loop {
        let now = read()?;
        if now != current {
            return Ok((now, Instant::now()));
        }
        if Instant::now() > give_up {
            return Err(io::Error::other("jiffies did not advance within a second"));
        }
    }
}

/// The known rate within 5% of `measured`, else `measured` rounded.
fn nearest_rate(measured: f64) -> u32 {
    KNOWN_RATES
        .iter()
        .copied()
        .find(|rate| (measured - *rate as f64).abs() <= *rate as f64 * 0.05)
        .unwrap_or(measured.round() as u32)
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
    fn measured_rates_snap_to_known_ones() {
        assert_eq!(nearest_rate(247.9), 250);
        assert_eq!(nearest_rate(1003.0), 1000);
        assert_eq!(nearest_rate(99.0), 100);
        assert_eq!(nearest_rate(302.0), 300);
        assert_eq!(nearest_rate(500.4), 500);
    }

    #[test]
    fn instructions_encode_little_endian() {
        assert_eq!(insn(0x85, 0, 0, 118), [0x85, 0, 0, 0, 118, 0, 0, 0]);
        assert_eq!(insn(0x95, 0, 0, 0), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }
}
