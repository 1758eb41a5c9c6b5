//! A private bpf filesystem for tests: pins go there instead of the machine's /sys/fs/bpf.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A bpffs mounted on a fresh folder under /tmp; on drop everything pinned in it is detached
/// and removed, and it is unmounted.
pub struct BpffsMount {
    root: PathBuf,
}

impl BpffsMount {
    pub fn new(tag: &str) -> io::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("npe-bpffs-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&root)?;
        let target = CString::new(root.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::other("NUL in path"))?;
        // SAFETY: all strings are NUL-terminated; no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            let _ = std::fs::remove_dir(&root);
            return Err(err);
        }
        Ok(Self { root })
    }

    /// The mount point; use a sub-folder of it as the agent's `--bpffs`.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        // Unpin links first (detaching programs), then drop the rest.
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let _ = crate::dataplane::pins::uninstall(&entry.path());
            }
        }
        if let Ok(target) = CString::new(self.root.as_os_str().as_encoded_bytes()) {
            // SAFETY: NUL-terminated path.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
                eprintln!(
                    "lab: could not unmount {}: {}",
                    self.root.display(),
                    io::Error::last_os_error()
                );
            }
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}
