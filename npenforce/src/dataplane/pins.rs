//! The agent's bpffs folder: where maps, programs and links are pinned, and how to remove them.
//!
//! Layout under the folder: `maps/<MAP>`, `progs/<program>`, `links/if<ifindex>-<hook>`, and
//! `judges/<map id>` (each load's program array of judging programs, see
//! `KernelEnforcer::release_older_judges`).

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::programs::links::PinnedLink;

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` lies on a bpf filesystem (pins only work there).
pub fn is_on_bpffs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: statfs is plain data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated and st is writable.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Checks that `dir` can hold pins: its nearest existing ancestor must be on a bpffs.
pub fn check_pin_dir(dir: &Path) -> io::Result<()> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    if is_on_bpffs(probe)? {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} is not on a bpf filesystem, so nothing can be pinned there; mount one first \
             (mount -t bpf bpf /sys/fs/bpf) or choose another --bpffs folder",
            probe.display()
        )))
    }
}

/// What [`uninstall`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub links: usize,
    pub programs: usize,
    pub maps: usize,
}

/// Detaches every pinned link (their programs stop running) and removes every pin under
/// `dir`, then the folder itself. A missing folder is not an error.
pub fn uninstall(dir: &Path) -> io::Result<Removed> {
    let mut removed = Removed::default();
    if !dir.exists() {
        return Ok(removed);
    }
    for link in entries(&dir.join("links"))? {
        // Unpinning drops the last reference to the link: the kernel detaches it.
        match PinnedLink::from_pin(&link) {
            Ok(pinned) => {
                pinned.unpin()?;
            }
            Err(_) => std::fs::remove_file(&link)?,
        }
        removed.links += 1;
    }
    for prog in entries(&dir.join("progs"))? {
        std::fs::remove_file(prog)?;
        removed.programs += 1;
    }
    for map in entries(&dir.join("maps"))?
        .into_iter()
        .chain(entries(&dir.join(super::loader::JUDGES_DIR))?)
    {
        std::fs::remove_file(map)?;
        removed.maps += 1;
    }
    for sub in ["links", "progs", "maps", super::loader::JUDGES_DIR] {
        let _ = std::fs::remove_dir(dir.join(sub));
    }
    std::fs::remove_dir(dir)?;
    Ok(removed)
}

/// The paths in `dir`; none if it does not exist.
pub(crate) fn entries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.map(|e| e.path())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
