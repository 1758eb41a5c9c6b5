//! An array map created with `BPF_F_MMAPABLE`, mapped into this process: the agent writes
//! such maps with plain and atomic stores instead of a syscall per value.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::maps::{Map, MapData, MapError};
use npenforce_common::shared_table::MAP_FLAGS;

#[derive(Debug, thiserror::Error)]
pub enum MappedArrayError {
    #[error("not an array map")]
    NotArray,
    #[error("reading the map's info: {0}")]
    Info(MapError),
    #[error("created without BPF_F_MMAPABLE (flags {0:#x})")]
    NotMappable(u32),
    #[error("values of {found} bytes, where this build's have {expected}")]
    Layout { found: u32, expected: usize },
    #[error("{found} entries, where this build's have {expected}")]
    Entries { found: u32, expected: u32 },
    #[error("mapping it into memory: {0}")]
    Mmap(io::Error),
}

/// The values of an array map, back to back from `base` (the kernel rounds each up to 8
/// bytes; callers use 8-byte multiples).
pub struct MappedArray {
    /// Keeps the map (and so the mapping's object) alive.
    _map: MapData,
    base: NonNull<u8>,
    entries: u32,
    mapped_len: usize,
}

// SAFETY: the mapping belongs to this value alone (it is unmapped on drop).
unsafe impl Send for MappedArray {}

impl MappedArray {
    /// Maps `map`, which must be a mappable array of `value_size`-byte values.
    pub fn new(map: Map, value_size: usize) -> Result<Self, MappedArrayError> {
        let Map::Array(map) = map else {
            return Err(MappedArrayError::NotArray);
        };
        let info = map.info().map_err(MappedArrayError::Info)?;
        if info.map_flags() & MAP_FLAGS == 0 {
            return Err(MappedArrayError::NotMappable(info.map_flags()));
        }
        if info.value_size() as usize != value_size {
            return Err(MappedArrayError::Layout {
                found: info.value_size(),
                expected: value_size,
            });
        }
        let entries = info.max_entries();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let mapped_len = (value_size * entries as usize).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the map's fd at offset 0, of no more than its size
        // rounded up to pages (what the kernel allows for BPF_F_MMAPABLE arrays).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MappedArrayError::Mmap(io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(MappedArrayError::Mmap(
            io::Error::other("mmap returned null"),
        ))?;
        Ok(Self {
            _map: map,
            base,
            entries,
            mapped_len,
        })
    }

    /// The map's `max_entries`.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Where the first value starts; the mapping lives as long as `self`.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.mapped_len);
        }
    }
}
