//! Network namespaces: create, enter (per thread, with setns), delete.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// Creates `/run/netns/<name>` with `lo` up.
    pub fn create(name: &str) -> io::Result<Self> {
        run_ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
            owned: true,
        };
        run_ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A stand-in for a removed namespace: owns nothing, deletes nothing.
    pub fn placeholder() -> Self {
        Self {
            name: String::new(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result.
    ///
    /// Only that thread changes namespace; sockets it creates stay in this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        run_in_netns(&self.path(), f)
    }

    /// Writes a sysctl under /proc/sys/net as seen from this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))?.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("sysctl {key}={value} in {}: {e}", self.name),
            )
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(err) = run_ip(&["netns", "del", &self.name]) {
            eprintln!(
                "lab: could not delete network namespace {}: {err}",
                self.name
            );
        }
    }
}

/// Runs `f` on a new thread that has entered the network namespace at `path`.
pub fn run_in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                enter(&file)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Moves the calling thread into the network namespace `file` refers to.
pub fn enter(file: &File) -> io::Result<()> {
    // SAFETY: setns(2) on a valid descriptor; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `ip` with `args`; a failure carries ip's stderr.
pub fn run_ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Runs an nft script inside `ns` (nft talks netlink in the namespace it runs in).
pub fn run_in_node_nft(ns: &Netns, script: &str) -> io::Result<()> {
    use std::io::Write;
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("nft stdin"))?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nft in {}: {}\n{script}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
