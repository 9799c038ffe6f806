//! Decoding ring-buffer records into events.
//!
//! Decoding never panics: a short, oversized or unknown record becomes a
//! [`DecodeError`] that the pipeline counts and reports.

use monitor_common::{kind, EventHeader, ExecEvent};
use serde::Serialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than the {need}-byte {what}")]
    Short {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("record says it is {declared} bytes but {got} arrived")]
    SizeMismatch { declared: u32, got: usize },
    #[error("exec record lengths (argv {argv}, filename {filename}) overrun its {size} bytes")]
    Overrun {
        argv: u16,
        filename: u16,
        size: usize,
    },
    #[error("unknown event kind {0}")]
    UnknownKind(u16),
}

/// Fields every event carries.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Common {
    pub ts_boot_ns: u64,
    pub cgroup_id: u64,
    pub session_cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ns_tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub flags: u16,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Exec {
    #[serde(flatten)]
    pub common: Common,
    pub ppid: u32,
    pub filename: String,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Exec(Exec),
}

fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            what,
            need,
            got: bytes.len(),
        });
    }
    // SAFETY: length checked; read_unaligned tolerates any alignment, and T is
    // one of the repr(C) integer-only ABI structs.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// Lossy text for display; non-UTF-8 bytes become U+FFFD.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let h: EventHeader = read(bytes, "event header")?;
    if h.size as usize != bytes.len() {
        return Err(DecodeError::SizeMismatch {
            declared: h.size,
            got: bytes.len(),
        });
    }
    let common = Common {
        ts_boot_ns: h.ts_boot_ns,
        cgroup_id: h.cgroup_id,
        session_cgroup_id: h.session_cgroup_id,
        pid: h.pid,
        tgid: h.tgid,
        ns_tgid: h.ns_tgid,
        uid: h.uid,
        gid: h.gid,
        flags: h.flags,
    };
    match h.kind {
        kind::EXEC => {
            let e: ExecEvent = read(bytes, "exec record")?;
            let body = std::mem::size_of::<ExecEvent>();
            let argv_end = body + e.argv_len as usize;
            let fname_end = argv_end + e.filename_len as usize;
            if fname_end > bytes.len() {
                return Err(DecodeError::Overrun {
                    argv: e.argv_len,
                    filename: e.filename_len,
                    size: bytes.len(),
                });
            }
            let argv_block = &bytes[body..argv_end];
            let argv = argv_block
                .strip_suffix(&[0])
                .unwrap_or(argv_block)
                .split(|&c| c == 0)
                .filter(|_| !argv_block.is_empty())
                .map(text)
                .collect();
            Ok(Event::Exec(Exec {
                common,
                ppid: e.ppid,
                filename: text(&bytes[argv_end..fname_end]),
                argv,
                argv_truncated: h.flags & monitor_common::flags::ARGV_TRUNCATED != 0,
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Encodes an exec record the way the kernel program does; used by tests
/// and benchmarks to produce records without a kernel.
pub fn encode_exec(header: EventHeader, ppid: u32, argv: &[&[u8]], filename: &[u8]) -> Vec<u8> {
    let mut argv_block = Vec::new();
    for a in argv {
        argv_block.extend_from_slice(a);
        argv_block.push(0);
    }
    let body = std::mem::size_of::<ExecEvent>();
    let size = body + argv_block.len() + filename.len();
    let ev = ExecEvent {
        header: EventHeader {
            kind: kind::EXEC,
            size: size as u32,
            ..header
        },
        ppid,
        filename_len: filename.len() as u16,
        argv_len: argv_block.len() as u16,
        _pad: 0,
    };
    let mut out = vec![0u8; body];
    // SAFETY: `out` holds exactly size_of::<ExecEvent>() bytes.
    unsafe { std::ptr::write_unaligned(out.as_mut_ptr() as *mut ExecEvent, ev) };
    out.extend_from_slice(&argv_block);
    out.extend_from_slice(filename);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> EventHeader {
        EventHeader {
            pid: 10,
            tgid: 10,
            uid: 1000,
            gid: 1000,
            cgroup_id: 77,
            ts_boot_ns: 5,
            ..Default::default()
        }
    }

    #[test]
    fn exec_round_trip() {
        let rec = encode_exec(
            header(),
            1,
            &[b"/bin/true", b"marker-1", b"non\xffutf8"],
            b"/usr/bin/true",
        );
        let Event::Exec(e) = decode(&rec).unwrap();
        assert_eq!(e.ppid, 1);
        assert_eq!(e.filename, "/usr/bin/true");
        assert_eq!(e.argv, vec!["/bin/true", "marker-1", "non\u{fffd}utf8"]);
        assert_eq!(e.common.cgroup_id, 77);
        assert_eq!(e.common.uid, 1000);
        assert!(!e.argv_truncated);
    }

    #[test]
    fn empty_argv_decodes_to_no_arguments() {
        let rec = encode_exec(header(), 1, &[], b"/x");
        let Event::Exec(e) = decode(&rec).unwrap();
        assert!(e.argv.is_empty());
        assert_eq!(e.filename, "/x");
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::Short { .. })));
        let mut rec = encode_exec(header(), 1, &[b"a"], b"/x");
        rec.push(0);
        assert!(matches!(
            decode(&rec),
            Err(DecodeError::SizeMismatch { .. })
        ));
        let mut rec = encode_exec(header(), 1, &[b"a"], b"/x");
        rec[62] = 0xff; // argv_len low byte
        rec[63] = 0x0f;
        assert!(matches!(decode(&rec), Err(DecodeError::Overrun { .. })));
        let mut rec = encode_exec(header(), 1, &[b"a"], b"/x");
        rec[0] = 0xee;
        assert_eq!(decode(&rec), Err(DecodeError::UnknownKind(0xee)));
    }

    /// Random bytes never panic the decoder.
    #[test]
    fn fuzz_decode_never_panics() {
        use rand::{Rng, SeedableRng};
        let seed = rand::random::<u64>();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let base = encode_exec(header(), 1, &[b"x", b"y"], b"/bin/x");
        for _ in 0..20_000 {
            let mut rec = base.clone();
            let n = rng.gen_range(0..4);
            for _ in 0..n {
                let i = rng.gen_range(0..rec.len());
                rec[i] = rng.gen();
            }
            rec.truncate(rng.gen_range(0..=rec.len()));
            let _ = decode(&rec);
        }
        eprintln!("seed {seed}");
    }
}
