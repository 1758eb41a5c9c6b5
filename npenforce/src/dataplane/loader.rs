//! Owns the loaded eBPF object: loads it (adopting pinned maps), attaches its programs (pinning
//! the links), and hands out its maps. Nothing else calls aya program APIs.

use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData, MapError, ProgramArray},
    programs::{
        links::{FdLink, Link, LinkOrder, PinnedLink},
        tc::{
            qdisc_add_clsact, NlOptions, SchedClassifierLink, SchedClassifierLinkId,
            TcAttachOptions, TcHandle,
        },
        ProgramError, ProgramFd, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
    },
    util::KernelVersion,
    Ebpf, EbpfError, EbpfLoader,
};
use npenforce_common::{
    ct_table, map_names, program_names, shared_table, AddrKey, CtHashKey, DataplaneConfig,
    DenyValue, CONFIG_GLOBAL,
};

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
    #[error("reading the eBPF object {path}: {source}")]
    ObjectFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    #[error(
        "{failed} map writes failed (full maps: see the log for which; the affected traffic is \
         denied until there is room): raise the sizes (--map-size-* flags)"
    )]
    WritesFailed { failed: usize },
    #[error(
        "the eBPF dataplane runs on x86-64 nodes only (this is {0}): its conntrack tables rely \
         on x86 memory ordering"
    )]
    UnsupportedArchitecture(&'static str),
    #[error("shared table {name}: {source}")]
    SharedTable {
        name: &'static str,
        #[source]
        source: super::shared_table::SharedTableError,
    },
    #[error("map {name}: {source}")]
    MappedArray {
        name: &'static str,
        #[source]
        source: super::mapped_array::MappedArrayError,
    },
    #[error("map {name}: {source}")]
    TableFull {
        name: &'static str,
        #[source]
        source: super::shared_table::TableFull,
    },
    #[error("reading /dev/urandom for the conntrack hash key: {0}")]
    Random(#[source] io::Error),
    #[error("measuring the kernel's tick rate (jiffies per second) failed: {0}")]
    Clock(#[source] io::Error),
    #[error("per-CPU map values (one per possible CPU, /sys/devices/system/cpu/possible): {0}")]
    PossibleCpus(#[source] io::Error),
    #[error("pinning under {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("interface {interface}: {source}")]
    Interface {
        interface: String,
        #[source]
        source: io::Error,
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

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

impl From<Hook> for TcAttachType {
    fn from(hook: Hook) -> Self {
        match hook {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }
}

/// Map sizes (entries). The defaults fit a node of 110 pods in a 50k-pod cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub endpoints: u32,
    /// Peer entries: the `POLICY_PEERS` trie and the `POLICY_PEER_HOSTS` shared table each
    /// (two slots per entry, see `shared_table::buckets_for`).
    pub policy_peers: u32,
    pub policy_ports: u32,
    /// Largest local pod id + 1 (POD_STATE; POD_COUNTERS holds twice as many).
    pub pods: u32,
    /// Tracked flows per address family (`CONNTRACK_V4` and `CONNTRACK_V6` each; the tables
    /// get four slots per flow, see `ct_table::buckets_for`).
    pub conntrack: u32,
    pub fragments: u32,
    pub interfaces: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            endpoints: 65536,
            policy_peers: 1 << 20,
            policy_ports: 1 << 18,
            // Ids go to local pods only and are reused; POD_COUNTERS is per CPU, so this size
            // is multiplied by the CPU count (65536 would cost 4.5 MiB per CPU).
            pods: 4096,
            conntrack: 1 << 18,
            fragments: 8192,
            interfaces: 4096,
        }
    }
}

/// How to load the dataplane.
#[derive(Clone, Debug, Default)]
pub struct DataplaneOptions {
    /// bpffs folder for pinned maps, programs and links; `None` keeps everything in this
    /// process (tests, benchmarks).
    pub bpffs: Option<PathBuf>,
    pub config: Option<DataplaneConfig>,
    pub map_sizes: MapSizes,
    /// An eBPF object file to load instead of the embedded one: the benchmark compares
    /// another build of the programs with this one. Its maps must have this build's names
    /// and layouts.
    pub object_path: Option<PathBuf>,
    /// Attach through clsact + cls_bpf even where the kernel has TCX: what kernels before
    /// 6.6 get, so that tests can run that path here.
    pub clsact_only: bool,
}

/// Where our clsact filter sits on an interface's hook: one filter per interface and hook,
/// at a fixed priority and handle, so that a restarted agent replaces the earlier agent's
/// filter in place (cls_bpf swaps the program atomically, as `bpf_link_update` does for a
/// TCX link) instead of adding a second filter that would keep the old program running.
const CLSACT_PRIORITY: u16 = 0x4e50;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0x4e50, 1);

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
    pub(crate) ebpf: Ebpf,
    bpffs: Option<PathBuf>,
    /// Pinned maps whose earlier pins this load adopted (the rest were created empty).
    adopted: BTreeSet<&'static str>,
    /// See [`DataplaneOptions::clsact_only`].
    clsact_only: bool,
}

/// `struct __sk_buff`'s size and where its `mark` (its third u32) is; the kernel takes the
/// fields it allows from a test run's input context (the rest must be zero) and writes the
/// context back.
const SK_BUFF_SIZE: usize = 192;
const SK_BUFF_MARK: std::ops::Range<usize> = 8..12;

fn sk_buff_with_mark(mark: u32) -> [u8; SK_BUFF_SIZE] {
    let mut ctx = [0u8; SK_BUFF_SIZE];
    ctx[SK_BUFF_MARK].copy_from_slice(&mark.to_ne_bytes());
    ctx
}

/// Whether the kernel has TCX links (Linux 6.6), as aya decides it.
fn kernel_has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Attaches through clsact + cls_bpf at our fixed place: replaces our earlier filter there
/// in place, or adds the filter (and the clsact qdisc) when there is none.
fn attach_clsact(
    classifier: &mut SchedClassifier,
    interface: &str,
    hook: Hook,
) -> Result<SchedClassifierLinkId, ProgramError> {
    // The qdisc must exist first; an existing one (ours or another tool's) is fine.
    let _ = qdisc_add_clsact(interface);
    let earlier =
        SchedClassifierLink::attached(interface, hook.into(), CLSACT_PRIORITY, CLSACT_HANDLE, None)
            .map_err(ProgramError::IOError)?;
    match classifier.attach_to_link(earlier) {
        Ok(id) => Ok(id),
        // No filter at our place yet (the kernel refuses to replace what is not there).
        Err(_) => classifier.attach_with_options(
            interface,
            hook.into(),
            TcAttachOptions::Netlink(NlOptions {
                priority: CLSACT_PRIORITY,
                handle: CLSACT_HANDLE,
                ..NlOptions::default()
            }),
        ),
    }
}

/// Removes our clsact filters (at `CLSACT_PRIORITY`) from every interface of the calling
/// thread's network namespace, both hooks: what `npenforce uninstall` does for kernels
/// without TCX, where filters cannot be pinned. Returns how many it removed.
pub fn detach_clsact_filters() -> io::Result<usize> {
    let mut removed = 0;
    for interface in super::links::links()? {
        for hook in [Hook::Ingress, Hook::Egress] {
            // An interface without our filter (or without clsact) refuses the removal.
            if let Ok(link) = SchedClassifierLink::attached(
                &interface.name,
                hook.into(),
                CLSACT_PRIORITY,
                CLSACT_HANDLE,
                None,
            ) {
                if link.detach().is_ok() {
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// The (slot in `map_names::JUDGES`, program) pairs that program `caller` tail-calls.
fn tail_calls_of(caller: &str) -> impl Iterator<Item = (u32, &'static str)> + '_ {
    program_names::TAIL_CALLS
        .iter()
        .filter(move |(from, _, _)| *from == caller)
        .map(|&(_, index, callee)| (index, callee))
}

/// What `KernelEnforcer::release_older_judges` did with the earlier agents' arrays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JudgesRelease {
    /// Arrays whose pins were removed: this agent runs wherever they were used.
    pub released: usize,
    /// Arrays kept pinned: an earlier agent's programs may still tail-call through them.
    pub kept: usize,
    /// Why they were kept: the interfaces an earlier agent's programs may still run on. Empty
    /// with arrays kept when where the earlier agents attached is unknown (clsact filters,
    /// which are not pinned, and an `IFACES` map started afresh).
    pub waiting_for: Vec<u32>,
}

/// Whether any of `programs` tail-calls (through `map_names::JUDGES`).
pub(crate) fn make_tail_calls(programs: &[(&str, Hook)]) -> bool {
    programs
        .iter()
        .any(|(name, _)| tail_calls_of(name).next().is_some())
}

/// The name of the pin of interface `ifindex`'s link on `hook`, under the folder's `links/`.
fn link_pin_name(ifindex: u32, hook: Hook) -> String {
    format!("if{ifindex}-{}", hook.name())
}

/// The interface a link pin's name ([`link_pin_name`]) is about.
fn ifindex_of_link_pin(name: &str) -> Option<u32> {
    name.strip_prefix("if")?.split_once('-')?.0.parse().ok()
}

/// Where each load pins its `map_names::JUDGES` under the bpffs folder.
pub const JUDGES_DIR: &str = "judges";

fn pin_err(path: &Path) -> impl FnOnce(io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::Pin {
        path: path.to_path_buf(),
        source,
    }
}

impl Dataplane {
    /// Loads the embedded object into the kernel with default options (nothing pinned).
    pub fn load() -> Result<Self, DataplaneError> {
        Self::load_with(&DataplaneOptions::default())
    }

    /// Loads the embedded object. With a bpffs folder, maps that hold enforcement state are
    /// adopted from earlier pins there (a restarted agent keeps the state the old one left)
    /// or created and pinned.
    pub fn load_with(options: &DataplaneOptions) -> Result<Self, DataplaneError> {
        if !object_embedded() {
            return Err(DataplaneError::ObjectNotBuilt);
        }
        // The conntrack tables' lock-free reads rely on x86's memory ordering (see the
        // kernel crate's `conntrack`), and the object is built for it.
        if !cfg!(target_arch = "x86_64") {
            return Err(DataplaneError::UnsupportedArchitecture(
                std::env::consts::ARCH,
            ));
        }
        let mut config = options.config.unwrap_or(DataplaneConfig::DEFAULT);
        if config.jiffies_per_second == 0 {
            config.jiffies_per_second =
                super::clock::jiffies_per_second().map_err(DataplaneError::Clock)?;
        }
        let sizes = options.map_sizes;
        let conntrack_buckets = ct_table::buckets_for(sizes.conntrack);
        config.conntrack_bucket_mask = conntrack_buckets - 1;
        let endpoint_buckets = shared_table::buckets_for(sizes.endpoints);
        config.endpoints_bucket_mask = endpoint_buckets - 1;
        let peer_host_buckets = shared_table::buckets_for(sizes.policy_peers);
        config.peer_hosts_bucket_mask = peer_host_buckets - 1;
        config.shortest_timeout_ticks = config
            .shortest_timeout_s()
            .saturating_mul(config.jiffies_per_second);
        let mut loader = EbpfLoader::new();
        loader
            .override_global(CONFIG_GLOBAL, &config, true)
            .map_max_entries(map_names::ENDPOINTS, endpoint_buckets)
            .map_max_entries(map_names::POLICY_PEERS, sizes.policy_peers)
            .map_max_entries(map_names::POLICY_PEER_HOSTS, peer_host_buckets)
            .map_max_entries(map_names::POLICY_PORTS, sizes.policy_ports)
            .map_max_entries(map_names::POD_STATE, sizes.pods)
            .map_max_entries(map_names::POD_COUNTERS, sizes.pods.saturating_mul(2))
            .map_max_entries(map_names::CONNTRACK_V4, conntrack_buckets)
            .map_max_entries(map_names::CONNTRACK_V6, conntrack_buckets)
            .map_max_entries(map_names::FRAGMENTS, sizes.fragments)
            .map_max_entries(map_names::IFACES, sizes.interfaces);
        let map_dir = options.bpffs.as_ref().map(|d| d.join("maps"));
        let mut adopted = BTreeSet::new();
        if let Some(dir) = &options.bpffs {
            super::pins::check_pin_dir(dir).map_err(pin_err(dir))?;
        }
        if let Some(dir) = &map_dir {
            std::fs::create_dir_all(dir).map_err(pin_err(dir))?;
            drop_incompatible_pins(dir, &sizes);
            for name in map_names::PINNED {
                let pin = dir.join(name);
                if pin.exists() {
                    adopted.insert(*name);
                }
                loader.map_pin_path(name, pin);
            }
        }
        let ebpf = match &options.object_path {
            Some(path) => {
                let object = std::fs::read(path).map_err(|source| DataplaneError::ObjectFile {
                    path: path.clone(),
                    source,
                })?;
                loader.load(&object)?
            }
            None => loader.load(EBPF_OBJECT)?,
        };
        let mut dataplane = Self {
            ebpf,
            bpffs: options.bpffs.clone(),
            adopted,
            clsact_only: options.clsact_only,
        };
        if !dataplane.adopted(map_names::CONNTRACK_KEY) {
            dataplane.set_conntrack_key()?;
        }
        Ok(dataplane)
    }

    /// The hash key of the conntrack and shared tables (`CONNTRACK_KEY`).
    pub fn conntrack_key(&mut self) -> Result<CtHashKey, DataplaneError> {
        let name = map_names::CONNTRACK_KEY;
        let map: aya::maps::Array<&mut MapData, CtHashKey> =
            aya::maps::Array::try_from(self.map_mut(name)?)
                .map_err(|source| DataplaneError::Map { name, source })?;
        map.get(&0, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// Gives fresh conntrack tables a random hash key (the tables are empty: the loader
    /// drops their pins when the key's pin is missing).
    fn set_conntrack_key(&mut self) -> Result<(), DataplaneError> {
        let mut bytes = [0u8; std::mem::size_of::<CtHashKey>()];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes))
            .map_err(DataplaneError::Random)?;
        let mut key = CtHashKey::default();
        for (word, chunk) in key.words.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = u64::from_ne_bytes(chunk.try_into().expect("chunks of 8"));
        }
        let name = map_names::CONNTRACK_KEY;
        let mut map: aya::maps::Array<&mut MapData, CtHashKey> =
            aya::maps::Array::try_from(self.map_mut(name)?)
                .map_err(|source| DataplaneError::Map { name, source })?;
        map.set(0, key, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// How many instructions the verifier walked to accept program `name` (loading it if
    /// needed); the kernel refuses a program at one million. `None` when the kernel does not
    /// say.
    pub fn verified_instructions(&mut self, name: &str) -> Result<Option<u32>, DataplaneError> {
        let classifier = self.classifier(name)?;
        let info = classifier
            .info()
            .map_err(|source| DataplaneError::Program {
                name: name.to_owned(),
                source,
            })?;
        Ok(info.verified_instruction_count())
    }

    /// Whether map `name` was adopted from an earlier agent's pin rather than created empty.
    pub fn adopted(&self, name: &str) -> bool {
        self.adopted.contains(name)
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
            self.fill_tail_calls(name)?;
        }
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| DataplaneError::NoSuchProgram(name.to_owned()))?
            .try_into()
            .map_err(|source| DataplaneError::Program {
                name: name.to_owned(),
                source,
            })
    }

    /// Loads the programs that `caller` tail-calls into their slots of `map_names::JUDGES`,
    /// so that they are in place before `caller` runs. An object without that map (a build
    /// from before the split, which benchmarks load as a baseline) makes no tail calls.
    fn fill_tail_calls(&mut self, caller: &str) -> Result<(), DataplaneError> {
        let map_name = map_names::JUDGES;
        if tail_calls_of(caller).next().is_none() || self.ebpf.map(map_name).is_none() {
            return Ok(());
        }
        for (index, callee) in tail_calls_of(caller) {
            let program = self.program_fd(callee)?;
            let map_err = |source| DataplaneError::Map {
                name: map_name,
                source,
            };
            let mut judges = ProgramArray::try_from(self.map_mut(map_name)?).map_err(map_err)?;
            judges.set(index, &program, 0).map_err(map_err)?;
        }
        self.pin_judges()
    }

    /// The pin of this load's `map_names::JUDGES`, under the bpffs folder's `judges/`, named
    /// by the map's id.
    fn judges_pin(&self) -> Result<Option<PathBuf>, DataplaneError> {
        let (Some(dir), Some(Map::ProgramArray(data))) =
            (&self.bpffs, self.ebpf.map(map_names::JUDGES))
        else {
            return Ok(None);
        };
        let info = data.info().map_err(|source| DataplaneError::Map {
            name: map_names::JUDGES,
            source,
        })?;
        Ok(Some(dir.join(JUDGES_DIR).join(info.id().to_string())))
    }

    /// Pins `map_names::JUDGES` (once) when the programs are pinned. The kernel empties a
    /// program array when no file or descriptor of userspace holds it any more: without a
    /// pin, the programs an agent leaves enforcing when it exits (or is killed) would fail
    /// every tail call. Each load pins its own array, which the next agent removes only
    /// after it took the links over (`KernelEnforcer::release_older_judges`).
    fn pin_judges(&mut self) -> Result<(), DataplaneError> {
        let Some(pin) = self.judges_pin()? else {
            return Ok(());
        };
        if pin.exists() {
            return Ok(());
        }
        if let Some(dir) = pin.parent() {
            std::fs::create_dir_all(dir).map_err(pin_err(dir))?;
        }
        self.map_mut(map_names::JUDGES)?
            .pin(&pin)
            .map_err(|e| DataplaneError::Pin {
                path: pin.clone(),
                source: io::Error::other(e.to_string()),
            })
    }

    /// The pins of the judging-program arrays of earlier loads (see
    /// `KernelEnforcer::release_older_judges`, which removes them when it is safe).
    pub fn older_judges(&self) -> Result<Vec<PathBuf>, DataplaneError> {
        let (Some(dir), Some(own)) = (&self.bpffs, self.judges_pin()?) else {
            return Ok(Vec::new());
        };
        let dir = dir.join(JUDGES_DIR);
        Ok(super::pins::entries(&dir)
            .map_err(pin_err(&dir))?
            .into_iter()
            .filter(|path| *path != own)
            .collect())
    }

    /// The interfaces named by the pinned links under the bpffs folder
    /// (`links/if<ifindex>-<hook>`): with TCX, every interface an agent attached to with
    /// that folder.
    pub fn pinned_link_interfaces(&self) -> Result<BTreeSet<u32>, DataplaneError> {
        let Some(dir) = &self.bpffs else {
            return Ok(BTreeSet::new());
        };
        let dir = dir.join("links");
        Ok(super::pins::entries(&dir)
            .map_err(pin_err(&dir))?
            .iter()
            .filter_map(|path| ifindex_of_link_pin(path.file_name()?.to_str()?))
            .collect())
    }

    /// Whether the interfaces that earlier agents attached to are unknown: their clsact
    /// filters are not pinned, so only an adopted `IFACES` map records them.
    pub fn earlier_interfaces_unknown(&self) -> bool {
        self.bpffs.is_some()
            && (self.clsact_only || !kernel_has_tcx())
            && !self.adopted(map_names::IFACES)
    }

    /// A copy of the descriptor of program `name`, loading it if needed.
    fn program_fd(&mut self, name: &str) -> Result<ProgramFd, DataplaneError> {
        self.classifier(name)?
            .fd()
            .map_err(|source| DataplaneError::Program {
                name: name.to_owned(),
                source,
            })?
            .try_clone()
            .map_err(|source| DataplaneError::Program {
                name: name.to_owned(),
                source: ProgramError::IOError(source),
            })
    }

    /// Loads program `name` into the kernel (verifier included) if it is not loaded yet, and
    /// pins it and the programs it tail-calls under the bpffs folder, replacing an older
    /// agent's pins: the pins name the running programs for operators (`bpftool prog show
    /// pinned ...`).
    pub fn load_program(&mut self, name: &str) -> Result<(), DataplaneError> {
        self.classifier(name)?;
        let Some(dir) = self.bpffs.clone() else {
            return Ok(());
        };
        let progs = dir.join("progs");
        std::fs::create_dir_all(&progs).map_err(pin_err(&progs))?;
        let callees = tail_calls_of(name).map(|(_, callee)| callee);
        for program in std::iter::once(name).chain(callees) {
            if self.ebpf.program(program).is_none() {
                // An older object, without the split (see `fill_tail_calls`).
                continue;
            }
            let pin = progs.join(program);
            let _ = std::fs::remove_file(&pin);
            self.classifier(program)?
                .pin(&pin)
                .map_err(|e| DataplaneError::Pin {
                    path: pin.clone(),
                    source: io::Error::other(e.to_string()),
                })?;
        }
        Ok(())
    }

    /// Attaches program `name` to `interface` (in the calling thread's network namespace).
    /// TCX on kernels that have it, otherwise clsact + cls_bpf.
    ///
    /// With a bpffs folder the TCX link is pinned there, and a link pinned earlier for the same
    /// interface and hook is taken over in place: the kernel swaps the program atomically, so
    /// a restarted agent never leaves a moment without enforcement. A clsact filter cannot be
    /// pinned; it stays in the interface's qdisc after the agent exits, and the next agent
    /// replaces it in place (see `CLSACT_PRIORITY`).
    pub fn attach(
        &mut self,
        name: &str,
        interface: &str,
        hook: Hook,
    ) -> Result<(), DataplaneError> {
        let link_pin = match &self.bpffs {
            Some(dir) => {
                let ifindex = if_index(interface)?;
                let links = dir.join("links");
                std::fs::create_dir_all(&links).map_err(pin_err(&links))?;
                Some(links.join(link_pin_name(ifindex, hook)))
            }
            None => None,
        };
        let program_err = |source| DataplaneError::Program {
            name: name.to_owned(),
            source,
        };
        let clsact = self.clsact_only || !kernel_has_tcx();
        let classifier = self.classifier(name)?;
        if clsact {
            let link_id = attach_clsact(classifier, interface, hook).map_err(program_err)?;
            if link_pin.is_some() {
                // Taken out of the program's links, the filter outlives this process (the
                // program's drop would detach it): the next agent takes it over.
                let link = classifier.take_link(link_id).map_err(program_err)?;
                std::mem::forget(link);
            }
            return Ok(());
        }
        if let Some(pin) = &link_pin {
            if let Ok(pinned) = PinnedLink::from_pin(pin) {
                let link = FdLink::from(pinned).try_into().map_err(
                    |e: aya::programs::links::LinkError| DataplaneError::Pin {
                        path: pin.clone(),
                        source: io::Error::other(e.to_string()),
                    },
                )?;
                classifier.attach_to_link(link).map_err(program_err)?;
                return Ok(());
            }
        }
        let link_id = classifier
            .attach_with_options(
                interface,
                hook.into(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(program_err)?;
        if let Some(pin) = link_pin {
            let link = classifier.take_link(link_id).map_err(program_err)?;
            let pin_failed = |e: &dyn std::fmt::Display| DataplaneError::Pin {
                path: pin.clone(),
                source: io::Error::other(e.to_string()),
            };
            let fd_link = FdLink::try_from(link).map_err(|e| pin_failed(&e))?;
            fd_link.pin(&pin).map_err(|e| pin_failed(&e))?;
        }
        Ok(())
    }

    /// Removes the pinned links of `ifindex` (both hooks). The kernel already dropped them if
    /// the interface is gone; this only removes their pins.
    pub fn forget_interface(&mut self, ifindex: u32) {
        if let Some(dir) = &self.bpffs {
            for hook in [Hook::Ingress, Hook::Egress] {
                let _ = std::fs::remove_file(dir.join("links").join(link_pin_name(ifindex, hook)));
            }
        }
    }

    /// Makes the benchmark drivers (`program_names::NEW_FLOWS`, `NEW_PEERS`) tail-call
    /// program `name`, loading it if needed. Benchmarks only; the agent never runs the
    /// drivers.
    pub fn set_bench_target(&mut self, name: &str) -> Result<(), DataplaneError> {
        let program = self.program_fd(name)?;
        let map_name = map_names::BENCH_TARGET;
        let map_err = |source| DataplaneError::Map {
            name: map_name,
            source,
        };
        let mut targets = ProgramArray::try_from(self.map_mut(map_name)?).map_err(map_err)?;
        targets.set(0, &program, 0).map_err(map_err)
    }

    /// Runs program `name` on `packet` with `BPF_PROG_TEST_RUN`, `repeat` times.
    pub fn test_run(
        &mut self,
        name: &str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome, DataplaneError> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.repeat = repeat.max(1);
        self.run_classifier(name, opts)
    }

    fn run_classifier(
        &mut self,
        name: &str,
        opts: TestRunOptions<'_>,
    ) -> Result<TestRunOutcome, DataplaneError> {
        let result =
            self.classifier(name)?
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

    /// One `BPF_PROG_TEST_RUN` of a TC program on a packet whose `skb->mark` is `mark`:
    /// the verdict and the mark the program left (how the programs hand a packet's
    /// classification to the next hook).
    pub fn test_run_marked(
        &mut self,
        name: &str,
        packet: &[u8],
        mark: u32,
    ) -> Result<(i32, u32), DataplaneError> {
        let ctx_in = sk_buff_with_mark(mark);
        let mut ctx_out = [0u8; SK_BUFF_SIZE];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.ctx_in = Some(&ctx_in);
        opts.ctx_out = Some(&mut ctx_out);
        opts.repeat = 1;
        let outcome = self.run_classifier(name, opts)?;
        let mark_out: [u8; 4] = ctx_out[SK_BUFF_MARK].try_into().expect("four bytes");
        Ok((outcome.verdict, u32::from_ne_bytes(mark_out)))
    }

    /// [`Dataplane::test_run`] on a packet whose `skb->mark` is `mark` (the programs do not
    /// change the mark of a packet they judge, so every run sees it).
    pub fn test_run_with_mark(
        &mut self,
        name: &str,
        packet: &[u8],
        repeat: u32,
        mark: u32,
    ) -> Result<TestRunOutcome, DataplaneError> {
        let ctx_in = sk_buff_with_mark(mark);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.ctx_in = Some(&ctx_in);
        opts.repeat = repeat.max(1);
        self.run_classifier(name, opts)
    }

    pub(crate) fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, DataplaneError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::NoSuchMap(name))
    }

    pub(crate) fn take_map(&mut self, name: &'static str) -> Result<Map, DataplaneError> {
        self.ebpf
            .take_map(name)
            .ok_or(DataplaneError::NoSuchMap(name))
    }

    fn source_denylist(
        &mut self,
    ) -> Result<BpfHashMap<&mut MapData, AddrKey, DenyValue>, DataplaneError> {
        let name = map_names::SOURCE_DENYLIST;
        BpfHashMap::try_from(self.map_mut(name)?)
            .map_err(|source| DataplaneError::Map { name, source })
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

/// The enforcing programs and the hook each runs on.
pub const POD_PROGRAMS: [(&str, Hook); 2] = [
    (program_names::FROM_POD, Hook::Ingress),
    (program_names::TO_POD, Hook::Egress),
];
pub const UPLINK_PROGRAMS: [(&str, Hook); 2] = [
    (program_names::FROM_UPLINK, Hook::Ingress),
    (program_names::TO_UPLINK, Hook::Egress),
];

/// The ifindex of `interface` in the calling thread's network namespace.
pub fn if_index(interface: &str) -> Result<u32, DataplaneError> {
    let name = std::ffi::CString::new(interface).map_err(|_| DataplaneError::Interface {
        interface: interface.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"),
    })?;
    // SAFETY: name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(DataplaneError::Interface {
            interface: interface.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(index)
}

/// A delete of a key that is not there: the kernel answers ENOENT.
pub(crate) fn is_not_found(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// An insert into a full map: the kernel answers E2BIG (hash, LPM) or ENOSPC.
pub(crate) fn is_full(err: &MapError) -> bool {
    match err {
        MapError::SyscallError(e) => matches!(
            e.io_error.raw_os_error(),
            Some(libc::E2BIG) | Some(libc::ENOSPC)
        ),
        _ => false,
    }
}

/// (key size, value size, max entries) each pinned map must have to be adopted.
fn expected_layout(name: &str, sizes: &MapSizes) -> Option<(u32, u32, u32)> {
    use npenforce_common::*;
    use std::mem::size_of;
    let s = |n: usize| n as u32;
    Some(match name {
        map_names::ENDPOINTS => (
            4,
            s(size_of::<shared_table::AddrBucket>()),
            shared_table::buckets_for(sizes.endpoints),
        ),
        map_names::POLICY_PEERS => (
            4 + s(size_of::<PeerKey>()),
            s(size_of::<PeerValue>()),
            sizes.policy_peers,
        ),
        map_names::POLICY_PORTS => (
            4 + s(size_of::<PortKey>()),
            s(size_of::<PortValue>()),
            sizes.policy_ports,
        ),
        map_names::POD_STATE => (4, s(size_of::<PodState>()), sizes.pods),
        map_names::IFACES => (4, s(size_of::<IfaceInfo>()), sizes.interfaces),
        map_names::IFACE_SLOTS => (4, 8, iface_slot::COUNT),
        map_names::POLICY_PEER_HOSTS => (
            4,
            s(size_of::<shared_table::PeerBucket>()),
            shared_table::buckets_for(sizes.policy_peers),
        ),
        map_names::PEER_HOST_BITS => (4, 8, host_filter::WORDS),
        map_names::NODE_ADDRS => (
            4,
            s(size_of::<shared_table::AddrBucket>()),
            shared_table::buckets_for(shared_table::NODE_ADDR_ENTRIES),
        ),
        map_names::CONNTRACK_V4 => (
            4,
            s(size_of::<CtBucket<CtKeyV4>>()),
            ct_table::buckets_for(sizes.conntrack),
        ),
        map_names::CONNTRACK_V6 => (
            4,
            s(size_of::<CtBucket<CtKey>>()),
            ct_table::buckets_for(sizes.conntrack),
        ),
        map_names::CONNTRACK_KEY => (4, s(size_of::<CtHashKey>()), 1),
        map_names::FRAGMENTS => (
            s(size_of::<FragKey>()),
            s(size_of::<FragEntry>()),
            sizes.fragments,
        ),
        map_names::POLICY_GENERATION => (4, 4, 1),
        map_names::ADOPTION_DEADLINE => (4, 8, 1),
        _ => return None,
    })
}

/// Removes pins whose map has another layout or size than this build expects (an upgrade
/// changed a type, or the operator changed a size): adopting them would misread their bytes.
/// Their state is rebuilt (policy maps by the first reconcile; tracked flows are judged anew).
/// The old programs keep running on the old maps until the new ones replace them.
fn drop_incompatible_pins(dir: &Path, sizes: &MapSizes) {
    // Pins of maps this build no longer has (renamed or split by an upgrade).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let known = name
                .to_str()
                .is_some_and(|name| map_names::PINNED.contains(&name));
            if !known {
                tracing::warn!(pin = %entry.path().display(), "removing the pin of a map this build does not have");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    // A `POLICY_PEERS` trie from before `POLICY_PEER_HOSTS` existed holds the single-address
    // entries this build keeps in the hash: adopting it would leave them where no lookup of
    // a hosts-only pod goes, and where no removal reaches. The old programs keep their own
    // trie until the new ones take over.
    if dir.join(map_names::POLICY_PEERS).exists()
        && !dir.join(map_names::POLICY_PEER_HOSTS).exists()
    {
        tracing::warn!(
            map = map_names::POLICY_PEERS,
            "pinned by a build without POLICY_PEER_HOSTS: starting it afresh"
        );
        let _ = std::fs::remove_file(dir.join(map_names::POLICY_PEERS));
    }
    let had_host_filter = dir.join(map_names::PEER_HOST_BITS).exists();
    for name in map_names::PINNED {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let Some(expected) = expected_layout(name, sizes) else {
            continue;
        };
        let info = aya::maps::MapInfo::from_pin(&path).ok();
        let found = info
            .as_ref()
            .map(|info| (info.key_size(), info.value_size(), info.max_entries()));
        // The shared tables and the filter are mapped into the agent: an array with their
        // layout but without the flag (a build in between) could not be.
        let mappable = info.is_some_and(|info| info.map_flags() & shared_table::MAP_FLAGS != 0);
        if found != Some(expected) || (map_names::MAPPED.contains(name) && !mappable) {
            tracing::warn!(
                map = name,
                ?found,
                ?expected,
                "pinned map does not match this build (layout or size changed): starting it afresh"
            );
            let _ = std::fs::remove_file(&path);
        }
    }
    drop_conntrack_without_key(dir);
    drop_pod_maps_without_endpoints(dir);
    keep_peer_hosts_with_their_filter(dir, had_host_filter);
}

/// `POLICY_PEER_HOSTS` and its filter `PEER_HOST_BITS` are adopted together or not at all.
/// The old programs skip the table for addresses whose bit is clear, until the new ones take
/// over. A filter not adopted is never written again, so they would miss the entries this
/// agent writes into the table; a table not adopted leaves them their own, whose bits the
/// new agent's fill of the filter (from the new table) would clear. Either way they could
/// skip an entry that narrows a prefix (an except): the other one starts afresh too. A
/// table pinned by a build without the filter is adopted alone (that build reads none).
fn keep_peer_hosts_with_their_filter(dir: &Path, had_filter: bool) {
    let table = dir.join(map_names::POLICY_PEER_HOSTS);
    let filter = dir.join(map_names::PEER_HOST_BITS);
    let orphan = match (table.exists(), filter.exists()) {
        (true, false) if had_filter => (&table, map_names::POLICY_PEER_HOSTS),
        (false, true) => (&filter, map_names::PEER_HOST_BITS),
        _ => return,
    };
    tracing::warn!(
        map = orphan.1,
        "pinned without its partner (POLICY_PEER_HOSTS with PEER_HOST_BITS): starting it afresh"
    );
    let _ = std::fs::remove_file(orphan.0);
}

/// Maps that name pods by id: peer keys, `POD_STATE`'s index, interface entries, tracked
/// flows. Pod ids are this node's own numbering, carried across restarts only by `ENDPOINTS`
/// (the agent reads them back from it); without it the new agent numbers pods afresh, and
/// those maps would be read with the wrong pods (a tracked flow judged again against another
/// pod's policy). So they start afresh too: an upgrade that changes `ENDPOINTS`' layout, or
/// a new `--map-size-endpoints`, is a fresh start. The old programs keep their own maps,
/// consistent with each other, until the new ones take over.
const MAPS_NAMING_PODS: [&str; 9] = [
    map_names::POLICY_PEERS,
    map_names::POLICY_PEER_HOSTS,
    map_names::POLICY_PORTS,
    map_names::POD_STATE,
    map_names::IFACES,
    map_names::IFACE_SLOTS,
    map_names::CONNTRACK_V4,
    map_names::CONNTRACK_V6,
    map_names::FRAGMENTS,
];

fn drop_pod_maps_without_endpoints(dir: &Path) {
    if dir.join(map_names::ENDPOINTS).exists() {
        return;
    }
    for name in MAPS_NAMING_PODS {
        let path = dir.join(name);
        if path.exists() {
            tracing::warn!(
                map = name,
                "pinned without ENDPOINTS, whose pod ids it uses: starting it afresh"
            );
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Conntrack and shared tables are only adopted with the hash key their entries were placed
/// with. The key is written right after the load that creates (and pins) its map, so an agent
/// that died in between left an all-zero key: that one is replaced too (with a known key,
/// chosen flows could be aimed at one bucket to evict the flows there). Shared tables started
/// afresh are filled by the first reconcile, before the new programs replace the old ones.
fn drop_conntrack_without_key(dir: &Path) {
    let key_pin = dir.join(map_names::CONNTRACK_KEY);
    if key_pin.exists() && pinned_conntrack_key(&key_pin).is_none_or(|key| key.words == [0; 5]) {
        tracing::warn!(
            map = map_names::CONNTRACK_KEY,
            "pinned hash key unreadable or never set: choosing a new one"
        );
        let _ = std::fs::remove_file(&key_pin);
    }
    if key_pin.exists() {
        return;
    }
    let tables = [map_names::CONNTRACK_V4, map_names::CONNTRACK_V6];
    for table in tables.into_iter().chain(map_names::SHARED_TABLES) {
        if dir.join(table).exists() {
            tracing::warn!(
                map = table,
                "pinned without its hash key: starting it afresh"
            );
            let _ = std::fs::remove_file(dir.join(table));
        }
    }
}

fn pinned_conntrack_key(pin: &Path) -> Option<CtHashKey> {
    let data = MapData::from_pin(pin).ok()?;
    let map: aya::maps::Array<MapData, CtHashKey> =
        aya::maps::Array::try_from(Map::Array(data)).ok()?;
    map.get(&0, 0).ok()
}
