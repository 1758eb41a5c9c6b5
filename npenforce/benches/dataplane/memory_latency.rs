//! What one random memory access costs on this machine, measured from userspace: the least a
//! new flow pays for its conntrack bucket, whatever the program does with it.
//!
//! A chase through a buffer the size of the conntrack table: every cache line holds the
//! offset of the next one, in a random cyclic order (one cycle through all lines, so the
//! chase never settles into a short loop that the caches could hold), and each load waits
//! for the previous one. The buffer is mapped with 4 KiB pages, as the kernel maps a large
//! array map (vmalloc), and once more with 2 MiB pages (transparent huge pages), so the
//! difference is the cost of the TLB misses.

use std::time::Instant;

const LINE: usize = 64;
const HUGE_PAGE: usize = 2 << 20;

/// ns per dependent random load over `bytes` of memory, once per run, or why it could not
/// be measured.
pub fn chase_ns(
    bytes: usize,
    huge_pages: bool,
    loads: usize,
    runs: usize,
) -> Result<Vec<f64>, String> {
    if huge_pages && bytes < HUGE_PAGE {
        return Err("smaller than a huge page".into());
    }
    let buffer = Buffer::map(bytes, huge_pages)?;
    if huge_pages && !buffer.backed_by_huge_pages() {
        return Err("no transparent huge pages for the buffer (THP off?)".into());
    }
    let lines = bytes / LINE;
    let order = random_cycle(lines);
    // SAFETY: `buffer` holds `lines` whole cache lines; every write is the first word of one.
    unsafe {
        for (line, next) in order.iter().enumerate() {
            buffer
                .start
                .add(line * LINE)
                .cast::<usize>()
                .write(next * LINE);
        }
    }
    let mut at = 0usize;
    let mut figures = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        for _ in 0..loads {
            // SAFETY: `at` is always the offset of a line of the buffer (written above).
            at = unsafe { buffer.start.add(at).cast::<usize>().read_volatile() };
        }
        figures.push(started.elapsed().as_nanos() as f64 / loads as f64);
    }
    std::hint::black_box(at);
    Ok(figures)
}

/// `next[i]`: the line after line `i`, all `n` lines in one cycle (Sattolo's shuffle).
fn random_cycle(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = (state % i as u64) as usize;
        order.swap(i, j);
    }
    let mut next = vec![0; n];
    for w in 0..n {
        next[order[w]] = order[(w + 1) % n];
    }
    next
}

/// An anonymous mapping, aligned to a huge page, unmapped on drop.
struct Buffer {
    mapping: *mut libc::c_void,
    mapped: usize,
    start: *mut u8,
    bytes: usize,
}

impl Buffer {
    fn map(bytes: usize, huge_pages: bool) -> Result<Buffer, String> {
        let mapped = bytes + HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping; checked below.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mapping == libc::MAP_FAILED {
            return Err(format!(
                "mmap of {bytes} bytes: {}",
                std::io::Error::last_os_error()
            ));
        }
        let offset = (HUGE_PAGE - mapping as usize % HUGE_PAGE) % HUGE_PAGE;
        // SAFETY: within the mapping (`HUGE_PAGE` extra bytes cover the alignment).
        let start = unsafe { mapping.cast::<u8>().add(offset) };
        let buffer = Buffer {
            mapping,
            mapped,
            start,
            bytes,
        };
        let advice = if huge_pages {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: advice on our own mapping.
        if unsafe { libc::madvise(start.cast(), bytes, advice) } != 0 {
            return Err(format!("madvise: {}", std::io::Error::last_os_error()));
        }
        // Touch every page now, so that the chase measures loads and not page faults.
        // SAFETY: within the buffer.
        unsafe { std::ptr::write_bytes(start, 1, bytes) };
        Ok(buffer)
    }

    /// Whether the kernel gave the buffer huge pages: `AnonHugePages` of its mapping in
    /// smaps (madvise split the buffer into a mapping of its own). A mapping's lines follow
    /// its header and start with a capital letter; headers start with a hex address.
    fn backed_by_huge_pages(&self) -> bool {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let header = format!("{:x}-", self.start as usize);
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
        lines.next();
        lines
            .take_while(|l| l.starts_with(|c: char| c.is_ascii_uppercase()))
            .find_map(|l| l.strip_prefix("AnonHugePages:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .is_some_and(|kb| kb * 1024 >= self.bytes / 2)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, not used after this.
        unsafe { libc::munmap(self.mapping, self.mapped) };
    }
}
