//! `npenforce agent` as a child process inside the lab's node namespace, and its HTTP
//! endpoints read from a thread in that namespace.

use std::{
    ffi::OsString,
    fs::File,
    io,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::lab::netns::run_in_netns;

/// A running `npenforce agent`; killed (SIGTERM, then SIGKILL) on drop.
pub struct AgentProcess {
    child: Child,
    /// The node namespace it runs in.
    netns: PathBuf,
    listen: SocketAddr,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts `binary agent <args>` inside the network namespace at `netns` (setns before
    /// exec, so /sys and the mounts stay the machine's; `ip netns exec` would remount /sys).
    /// Its stdout and stderr are appended to `log`. The child gets SIGKILL if this thread
    /// dies first.
    pub fn start(
        binary: &Path,
        netns: &Path,
        listen: SocketAddr,
        args: &[OsString],
        log: &Path,
    ) -> io::Result<Self> {
        let ns = File::open(netns)?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let err = out.try_clone()?;
        let fd = ns.as_raw_fd();
        let mut command = Command::new(binary);
        command
            .arg("agent")
            .arg("--listen")
            .arg(listen.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        // SAFETY: the closure only makes async-signal-safe system calls (setns, prctl) on a
        // descriptor that stays open until spawn returns.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop(ns);
        Ok(AgentProcess {
            child,
            netns: netns.to_path_buf(),
            listen,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status, if the agent has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `kill -9`: the agent gets no chance to clean up; waits until it is gone.
    pub fn kill9(&mut self) -> io::Result<ExitStatus> {
        self.signal(libc::SIGKILL)?;
        self.child.wait()
    }

    /// SIGTERM (the agent exits, leaving its pinned programs enforcing), then SIGKILL after
    /// `grace`.
    pub fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9()
    }

    fn signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        if self.exited().is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id()).map_err(io::Error::other)?;
        // SAFETY: kill(2) on our own, not yet reaped, child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// GETs `path` from the agent's endpoints (in the node namespace).
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        let listen = self.listen;
        run_in_netns(&self.netns, || {
            super::http::get(listen, "localhost", path, Duration::from_secs(2))
        })?
    }

    /// The `/status` document.
    pub fn status(&self) -> io::Result<serde_json::Value> {
        let (code, body) = self.get("/status")?;
        if code != 200 {
            return Err(io::Error::other(format!("/status answered {code}: {body}")));
        }
        serde_json::from_str(&body).map_err(io::Error::other)
    }

    /// `revision` of `/status`.
    pub fn revision(&self) -> io::Result<u64> {
        self.status()?["revision"]
            .as_u64()
            .ok_or_else(|| io::Error::other("/status has no revision"))
    }

    /// Waits until `/readyz` answers 200; fails early when the agent exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> io::Result<Duration> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Err(io::Error::other(format!(
                    "the agent exited ({status}) before it was ready; its log {}:\n{}",
                    self.log.display(),
                    self.log_tail(30)
                )));
            }
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(io::Error::other(format!(
                    "the agent was not ready after {timeout:?}; its log {}:\n{}",
                    self.log.display(),
                    self.log_tail(30)
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until `revision` exceeds `after`; returns the new revision and the time taken.
    pub fn wait_revision(&mut self, after: u64, timeout: Duration) -> io::Result<(u64, Duration)> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Err(io::Error::other(format!(
                    "the agent exited ({status}); its log {}:\n{}",
                    self.log.display(),
                    self.log_tail(30)
                )));
            }
            if let Ok(r) = self.revision() {
                if r > after {
                    return Ok((r, start.elapsed()));
                }
            }
            if start.elapsed() > timeout {
                return Err(io::Error::other(format!(
                    "revision still {after} after {timeout:?}; status: {}\nagent log {}:\n{}",
                    self.status()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string()),
                    self.log.display(),
                    self.log_tail(30)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last `lines` lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

/// The last `lines` lines of a file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.terminate(Duration::from_secs(5));
    }
}
