//! Classic tracepoint record layouts, read from tracefs `format` files.
//!
//! Layouts move between kernels (`sched_process_fork.child_pid` is at 44 on
//! 6.1 and at 20 on 6.18), so field offsets are read at load time.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted (looked in /sys/kernel/tracing and /sys/kernel/debug/tracing)"
    )]
    NotMounted,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no field named `{field}` in the tracepoint format")]
    NoField { path: PathBuf, field: String },
    #[error("{path}:{line}: malformed field line: {text}")]
    Malformed {
        path: PathBuf,
        line: usize,
        text: String,
    },
}

/// The tracefs mount point, `/sys/kernel/tracing` preferred. Mounts tracefs
/// there when no mount is found (minimal hosts and VMs do not mount it).
pub fn tracefs_root() -> Result<PathBuf, TracefsError> {
    let find = || {
        ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("events").is_dir())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let _ = nix::mount::mount(
        Some("tracefs"),
        "/sys/kernel/tracing",
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    find().ok_or(TracefsError::NotMounted)
}

/// Offset of `field` in the record of tracepoint `category/name`.
pub fn field_offset(category: &str, name: &str, field: &str) -> Result<u32, TracefsError> {
    let (path, text) = read_format(category, name)?;
    parse_field_offset(&path, &text, field)
}

/// The `format` file of tracepoint `category/name`: its path and text.
fn read_format(category: &str, name: &str) -> Result<(PathBuf, String), TracefsError> {
    let path = tracefs_root()?
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
        path: path.clone(),
        source,
    })?;
    Ok((path, text))
}

/// Checks that a `syscalls:sys_enter_*` record holds its arguments as
/// 8-byte slots from offset 16, as the programs read them.
pub fn check_syscall_args(name: &str) -> Result<(), TracefsError> {
    let (path, text) = read_format("syscalls", name)?;
    parse_syscall_args(&path, &text)
}

/// Parses a syscall enter format; public for tests.
pub fn parse_syscall_args(path: &Path, text: &str) -> Result<(), TracefsError> {
    let mut i = 0u32;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        if rest.contains("common_") || rest.contains("__syscall_nr") {
            continue;
        }
        let offset = rest
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))
            .and_then(|o| o.parse::<u32>().ok());
        if offset != Some(16 + 8 * i) {
            return Err(TracefsError::Malformed {
                path: path.to_path_buf(),
                line: n + 1,
                text: format!("{line} (expected argument {i} at offset {})", 16 + 8 * i),
            });
        }
        i += 1;
    }
    Ok(())
}

/// Whether tracepoint `category/name` exists on this kernel.
pub fn exists(category: &str, name: &str) -> bool {
    tracefs_root()
        .map(|r| r.join("events").join(category).join(name).is_dir())
        .unwrap_or(false)
}

/// Parses a tracefs `format` file; public for tests.
pub fn parse_field_offset(path: &Path, text: &str, field: &str) -> Result<u32, TracefsError> {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        // "field:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;"
        let mut parts = rest.split(';');
        let decl = parts.next().unwrap_or_default().trim();
        let name = decl.rsplit([' ', '*']).next().unwrap_or_default();
        let name = name.split('[').next().unwrap_or_default();
        if name != field {
            continue;
        }
        let offset = parts
            .find_map(|p| p.trim().strip_prefix("offset:").map(str::to_string))
            .and_then(|o| o.parse::<u32>().ok());
        return offset.ok_or_else(|| TracefsError::Malformed {
            path: path.to_path_buf(),
            line: i + 1,
            text: line.to_string(),
        });
    }
    Err(TracefsError::NoField {
        path: path.to_path_buf(),
        field: field.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXEC_6_18: &str = "name: sched_process_exec\nID: 316\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n";

    #[test]
    fn parses_data_loc_and_plain_fields() {
        let p = Path::new("format");
        assert_eq!(parse_field_offset(p, EXEC_6_18, "filename").unwrap(), 8);
        assert_eq!(parse_field_offset(p, EXEC_6_18, "old_pid").unwrap(), 16);
        assert_eq!(parse_field_offset(p, EXEC_6_18, "common_pid").unwrap(), 4);
    }

    #[test]
    fn syscall_argument_layout_is_checked() {
        let p = Path::new("format");
        let good = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\n\tfield:int dfd;\toffset:16;\tsize:8;\n\tfield:const char * pathname;\toffset:24;\tsize:8;\n";
        parse_syscall_args(p, good).unwrap();
        let bad = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\n\tfield:int dfd;\toffset:12;\tsize:4;\n";
        assert!(matches!(
            parse_syscall_args(p, bad),
            Err(TracefsError::Malformed { line: 2, .. })
        ));
    }

    #[test]
    fn missing_and_malformed_fields_are_errors() {
        let p = Path::new("format");
        assert!(matches!(
            parse_field_offset(p, EXEC_6_18, "nope"),
            Err(TracefsError::NoField { .. })
        ));
        let bad = "\tfield:int x;\toffset:zz;\n";
        let err = parse_field_offset(p, bad, "x").unwrap_err();
        assert!(
            matches!(err, TracefsError::Malformed { line: 1, .. }),
            "{err}"
        );
    }
}
