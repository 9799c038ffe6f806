//! Reads of kernel memory at BTF-resolved offsets.

use aya_ebpf::helpers::bpf_probe_read_kernel;

/// Reads a `T` at `base + off`.
#[inline(always)]
pub fn at<T>(base: u64, off: u32) -> Result<T, i32> {
    if base == 0 {
        return Err(-14);
    }
    // SAFETY: bpf_probe_read_kernel tolerates faults and returns an error.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }
}

/// Reads a pointer at `base + off`.
#[inline(always)]
pub fn ptr(base: u64, off: u32) -> Result<u64, i32> {
    at::<u64>(base, off)
}
