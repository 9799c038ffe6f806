//! A minimal writer of "newc" cpio archives, the format the kernel unpacks
//! as an initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).

/// An archive being built in memory.
pub struct Cpio {
    out: Vec<u8>,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    /// A directory (parents must have been added first).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data);
    }

    /// A character device node.
    pub fn chardev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), &[]);
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let name = name.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible archives
            u32::try_from(data.len()).expect("initramfs member over 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_newc() {
        let mut c = Cpio::new();
        c.dir("/dev");
        c.file("init", 0o755, b"hello");
        let a = c.finish();
        assert_eq!(&a[..6], b"070701");
        // Header (110 bytes) + "dev\0" (4) = 114, padded to 116.
        assert_eq!(&a[110..114], b"dev\0");
        assert_eq!(&a[116..122], b"070701");
        // Second entry: name "init\0" at 226..231, data after padding to 232.
        assert_eq!(&a[226..231], b"init\0");
        assert_eq!(&a[232..237], b"hello");
        assert!(a.len().is_multiple_of(4));
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    /// The host's cpio(1), when installed, lists what we wrote.
    #[test]
    fn cpio_tool_reads_it() {
        let mut c = Cpio::new();
        c.dir("a");
        c.file("a/b", 0o644, b"xyz");
        c.chardev("a/console", 0o600, 5, 1);
        let a = c.finish();
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "-v"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            eprintln!("skip: cpio(1) not installed");
            return;
        };
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&a).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(text.contains("a/b"), "{text}");
        assert!(text.contains("a/console"), "{text}");
        assert!(text.lines().any(|l| l.starts_with('c')), "{text}");
    }
}
