//! Owns the loaded eBPF object: loads it, attaches its programs, and writes its maps.

use std::{net::IpAddr, time::Duration};

use aya::{
    maps::{HashMap as BpfHashMap, MapError},
    programs::{ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions},
    Ebpf, EbpfError,
};
use npenforce_common::{map_names, AddrKey, DenyValue};

use crate::addr::kernel_addr;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time (empty when it
/// was not built; see build.rs).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/npenforce.bpf.o"));

/// True when this binary embeds a real eBPF object.
pub fn object_embedded() -> bool {
    !EBPF_OBJECT.is_empty()
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this npenforce binary was built without its eBPF object: run `cargo xtask build-ebpf` \
         (or `cargo xtask build`) and rebuild"
    )]
    ObjectNotBuilt,
    #[error("loading the eBPF object failed")]
    Load(#[from] EbpfError),
    #[error("the eBPF object has no program named {0}")]
    NoSuchProgram(String),
    #[error("program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: ProgramError,
    },
    #[error("the eBPF object has no map named {0}")]
    NoSuchMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// Where a program runs on an interface, named from the interface's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Packets the interface receives (on a host veth: what the pod sends).
    Ingress,
    /// Packets the interface transmits (on a host veth: what is delivered to the pod).
    Egress,
}

impl From<Hook> for TcAttachType {
    fn from(hook: Hook) -> Self {
        match hook {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }
}

/// Result of one `BPF_PROG_TEST_RUN` call.
#[derive(Clone, Copy, Debug)]
pub struct TestRunOutcome {
    /// The program's return code (for TC: `npenforce_common::verdict`).
    pub verdict: i32,
    /// Mean time per run as the kernel measured it.
    pub per_run: Duration,
}

/// The loaded eBPF object and the links of its attached programs (dropping it detaches
/// everything that is not pinned).
pub struct Dataplane {
    ebpf: Ebpf,
}

impl Dataplane {
    /// Loads the embedded object into the kernel (maps created, programs not yet loaded).
    pub fn load() -> Result<Self, DataplaneError> {
        if !object_embedded() {
            return Err(DataplaneError::ObjectNotBuilt);
        }
        let ebpf = Ebpf::load(EBPF_OBJECT)?;
        Ok(Self { ebpf })
    }

    fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier, DataplaneError> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| DataplaneError::NoSuchProgram(name.to_owned()))?;
        let classifier: &mut SchedClassifier =
            program
                .try_into()
                .map_err(|source| DataplaneError::Program {
                    name: name.to_owned(),
                    source,
                })?;
        if classifier.fd().is_err() {
            classifier
                .load()
                .map_err(|source| DataplaneError::Program {
                    name: name.to_owned(),
                    source,
                })?;
        }
        Ok(classifier)
    }

    /// Loads program `name` into the kernel (verifier included) if it is not loaded yet.
    pub fn load_program(&mut self, name: &str) -> Result<(), DataplaneError> {
        self.classifier(name).map(|_| ())
    }

    /// Attaches program `name` to `interface` (in the calling thread's network namespace).
    /// TCX on kernels that have it, otherwise clsact + cls_bpf.
    pub fn attach(
        &mut self,
        name: &str,
        interface: &str,
        hook: Hook,
    ) -> Result<(), DataplaneError> {
        let classifier = self.classifier(name)?;
        match classifier.attach(interface, hook.into()) {
            Ok(_) => Ok(()),
            Err(ProgramError::TcError(_)) => {
                // Kernels before 6.6 attach through clsact, which must exist first.
                let _ = aya::programs::tc::qdisc_add_clsact(interface);
                classifier
                    .attach(interface, hook.into())
                    .map(|_| ())
                    .map_err(|source| DataplaneError::Program {
                        name: name.to_owned(),
                        source,
                    })
            }
            Err(source) => Err(DataplaneError::Program {
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// Runs program `name` on `packet` with `BPF_PROG_TEST_RUN`, `repeat` times.
    pub fn test_run(
        &mut self,
        name: &str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome, DataplaneError> {
        let classifier = self.classifier(name)?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.repeat = repeat.max(1);
        let result = classifier
            .test_run(opts)
            .map_err(|source| DataplaneError::Program {
                name: name.to_owned(),
                source,
            })?;
        Ok(TestRunOutcome {
            // The kernel returns the program's int as u32; TC codes include -1.
            verdict: result.return_value as i32,
            per_run: result.duration,
        })
    }

    fn source_denylist(
        &mut self,
    ) -> Result<BpfHashMap<&mut aya::maps::MapData, AddrKey, DenyValue>, DataplaneError> {
        let name = map_names::SOURCE_DENYLIST;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::NoSuchMap(name))?;
        BpfHashMap::try_from(map).map_err(|source| DataplaneError::Map { name, source })
    }

    /// Drops every packet from `source` in the source-filter program.
    pub fn deny_source(&mut self, source: IpAddr, tag: u32) -> Result<(), DataplaneError> {
        let key = AddrKey {
            addr: kernel_addr(source),
        };
        self.source_denylist()?
            .insert(key, DenyValue { tag }, 0)
            .map_err(|source| DataplaneError::Map {
                name: map_names::SOURCE_DENYLIST,
                source,
            })
    }

    /// Undoes [`Dataplane::deny_source`]; removing an absent entry is not an error.
    pub fn allow_source(&mut self, source: IpAddr) -> Result<(), DataplaneError> {
        let key = AddrKey {
            addr: kernel_addr(source),
        };
        match self.source_denylist()?.remove(&key) {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(source) => Err(DataplaneError::Map {
                name: map_names::SOURCE_DENYLIST,
                source,
            }),
        }
    }
}

/// A delete of a key that is not there: the kernel answers ENOENT.
fn is_not_found(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}
