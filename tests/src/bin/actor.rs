//! A small program that performs exactly the operations a test asks for,
//! so the events it causes are known in advance.
//!
//! `actor opens DIR` — five opens of files prepared in DIR: absolute,
//! relative (after chdir), through a symlink, openat with a directory fd,
//! and through `..`.
//! `actor tcp PORT` — one TCP connect to 127.0.0.1:PORT.
//! `actor udp PORT` — one UDP datagram to 127.0.0.1:PORT.
//! `actor spawn N PROG [ARGS]` — fork+exec PROG N times, one after another.
//! `actor uring-open PATH` — one io_uring `IORING_OP_OPENAT` of PATH.
//! `actor openloop N PATH` — N open+close pairs; prints mean ns per pair.
//! `actor openrate RATE SECS PATH` — open+close pairs paced at RATE per
//! second (0: as fast as possible) for SECS; prints `pairs elapsed_ns`.
//! `actor execrate RATE SECS PROG [ARGS]` — fork+exec PROG at RATE per second
//! for SECS seconds, from several threads sharing one schedule; prints how
//! many were spawned.
//! `actor timeit N PREP CMD [ARGS]` — runs the shell command PREP (untimed,
//! skipped when empty), then CMD, N times; prints the median ns of CMD.
//!
//! Enforcement probes print `result ok` or `result errno=N` instead of
//! failing:
//! `actor uring-try PATH` — an io_uring `IORING_OP_OPENAT` of PATH.
//! `actor chroot-open ROOT PATH` — chroot(ROOT), then open PATH.
//! `actor bind-open SRC TARGET` — make the mount tree private, bind-mount
//! SRC on TARGET, then open TARGET (run under `unshare -Urm`).
//! `actor deep-open DIR NAME DEPTH FILE` — from DIR, descend DEPTH times
//! into NAME with openat (creating the directories and FILE when
//! `AGENTMON_CREATE` is set), then open FILE there: a path longer than
//! PATH_MAX without ever passing one to the kernel.
//! `actor denyloop SECS PATH [STOPFILE]` — open PATH for SECS seconds (or
//! until STOPFILE exists); prints `opened N denied M`.

use std::{
    ffi::CString,
    net::{TcpStream, UdpSocket},
    os::unix::process::CommandExt,
    path::Path,
    process::Command,
};

fn open(path: &str) {
    std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Opens `path` read-only; 0 or the errno.
fn try_open(path: &str) -> i32 {
    let p = CString::new(path).unwrap();
    // SAFETY: plain syscalls on a valid C string.
    unsafe {
        let fd = libc::open(p.as_ptr(), libc::O_RDONLY);
        if fd < 0 {
            return errno();
        }
        libc::close(fd);
    }
    0
}

/// Generator threads of `execrate`.
const EXEC_THREADS: u64 = 4;

/// Spawns `prog args` at `rate` per second for `secs` seconds; returns how
/// many were spawned. Spawn k is due at `k / rate` seconds after the start;
/// each of [`EXEC_THREADS`] threads claims the next due spawn, sleeps until
/// its time and spawns it without waiting for it (its finished children are
/// reaped as it goes), so the rate does not depend on how long one exec
/// takes. Spawns that fall behind are made as soon as a thread is free;
/// none is made after `secs`.
fn execrate(rate: u64, secs: u64, prog: &str, args: &[String]) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    let rate = rate.max(1);
    let start = std::time::Instant::now();
    let end = start + std::time::Duration::from_secs(secs);
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..EXEC_THREADS)
            .map(|_| {
                s.spawn(|| {
                    let mut made = 0u64;
                    let mut running: Vec<std::process::Child> = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let due = start
                            + std::time::Duration::from_nanos(
                                (k as u128 * 1_000_000_000 / rate as u128) as u64,
                            );
                        if due >= end {
                            break;
                        }
                        let now = std::time::Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        if std::time::Instant::now() >= end {
                            break;
                        }
                        let mut c = Command::new(prog);
                        c.args(args).stdout(std::process::Stdio::null());
                        running.push(c.spawn().expect("spawn"));
                        running.retain_mut(|ch| ch.try_wait().ok().flatten().is_none());
                        made += 1;
                    }
                    for mut ch in running {
                        ch.wait().expect("wait");
                    }
                    made
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    })
}

fn report(errno: i32) {
    if errno == 0 {
        println!("result ok");
    } else {
        println!("result errno={errno}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("opens") => {
            let dir = Path::new(&args[2]);
            open(&dir.join("abs.txt").display().to_string());
            std::env::set_current_dir(dir).unwrap();
            open("rel.txt");
            open("link.txt");
            let sub = CString::new(dir.join("sub").display().to_string()).unwrap();
            // SAFETY: plain syscalls on valid C strings.
            unsafe {
                let dfd = libc::open(sub.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                assert!(dfd >= 0, "open sub dir");
                let name = CString::new("at.txt").unwrap();
                let fd = libc::openat(dfd, name.as_ptr(), libc::O_RDONLY);
                assert!(fd >= 0, "openat at.txt");
                libc::close(fd);
                libc::close(dfd);
            }
            open("sub/../dotdot.txt");
        }
        Some("tcp") => {
            let port: u16 = args[2].parse().unwrap();
            TcpStream::connect(("127.0.0.1", port)).expect("tcp connect");
        }
        Some("udp") => {
            let port: u16 = args[2].parse().unwrap();
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(b"agentmon", ("127.0.0.1", port))
                .expect("udp send");
        }
        Some("spawn") => {
            let n: usize = args[2].parse().unwrap();
            for _ in 0..n {
                let st = Command::new(&args[3])
                    .args(&args[4..])
                    .status()
                    .expect("spawn");
                assert!(st.success());
            }
        }
        Some("uring-open") => {
            // One IORING_OP_OPENAT: invisible to the open syscall tracepoints.
            let r = uring_openat(&args[2]);
            assert!(r >= 0, "io_uring openat failed: {r}");
            println!("fd {r}");
        }
        Some("openloop") => {
            // N open+close pairs of PATH; prints the mean ns per pair.
            let n: u64 = args[2].parse().unwrap();
            let path = CString::new(args[3].as_str()).unwrap();
            let start = std::time::Instant::now();
            for _ in 0..n {
                // SAFETY: plain syscalls on a valid C string.
                unsafe {
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                    assert!(fd >= 0, "open");
                    libc::close(fd);
                }
            }
            println!("{}", start.elapsed().as_nanos() as u64 / n.max(1));
        }
        Some("openrate") => {
            let rate: u64 = args[2].parse().unwrap();
            let secs: u64 = args[3].parse().unwrap();
            let path = CString::new(args[4].as_str()).unwrap();
            let dur = std::time::Duration::from_secs(secs);
            let start = std::time::Instant::now();
            let mut n = 0u64;
            loop {
                let elapsed = start.elapsed();
                if elapsed >= dur {
                    break;
                }
                // Catch up to the target count in small bursts, then sleep
                // out the rest of a 1 ms slot.
                let due = if rate == 0 {
                    n + 1024
                } else {
                    (rate as u128 * elapsed.as_nanos() / 1_000_000_000) as u64 + 1
                };
                if n >= due {
                    std::thread::sleep(std::time::Duration::from_micros(500));
                    continue;
                }
                let burst = due.min(n + 4096) - n;
                for _ in 0..burst {
                    // SAFETY: plain syscalls on a valid C string.
                    unsafe {
                        let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                        assert!(fd >= 0, "open");
                        libc::close(fd);
                    }
                    n += 1;
                }
            }
            println!("{n} {}", start.elapsed().as_nanos());
        }
        Some("timeit") => {
            let n: usize = args[2].parse().unwrap();
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                if !args[3].is_empty() {
                    let st = Command::new("sh")
                        .args(["-c", &args[3]])
                        .stdout(std::process::Stdio::null())
                        .status()
                        .expect("prep");
                    assert!(st.success(), "prep `{}` failed", args[3]);
                }
                let t = std::time::Instant::now();
                let st = Command::new(&args[4])
                    .args(&args[5..])
                    .stdout(std::process::Stdio::null())
                    .status()
                    .expect("spawn");
                times.push(t.elapsed().as_nanos() as u64);
                assert!(st.success(), "{} failed: {st}", args[4]);
            }
            times.sort_unstable();
            println!("{}", times[times.len() / 2]);
        }
        Some("execrate") => {
            // Fork+exec PROG at RATE per second for SECS seconds (paced),
            // from several threads sharing one schedule: one thread cannot
            // spawn faster than one exec takes to start.
            let rate: u64 = args[2].parse().unwrap();
            let secs: u64 = args[3].parse().unwrap();
            let n = execrate(rate, secs, &args[4], &args[5..]);
            println!("{n}");
        }
        Some("exec") => {
            // Replace this process (used to test tags across exec).
            let e = Command::new(&args[2]).args(&args[3..]).exec();
            panic!("exec {}: {e}", args[2]);
        }
        Some("uring-try") => {
            let r = uring_openat(&args[2]);
            report(if r >= 0 { 0 } else { -r });
        }
        Some("chroot-open") => {
            let root = CString::new(args[2].as_str()).unwrap();
            // SAFETY: plain syscalls on valid C strings.
            unsafe {
                assert_eq!(libc::chroot(root.as_ptr()), 0, "chroot: {}", errno());
                assert_eq!(libc::chdir(c"/".as_ptr()), 0);
            }
            report(try_open(&args[3]));
        }
        Some("bind-open") => {
            let src = CString::new(args[2].as_str()).unwrap();
            let dst = CString::new(args[3].as_str()).unwrap();
            // SAFETY: plain syscalls on valid C strings.
            unsafe {
                let r = libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                );
                assert_eq!(r, 0, "make / private: {}", errno());
                let r = libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                );
                assert_eq!(r, 0, "bind mount: {}", errno());
            }
            report(try_open(&args[3]));
        }
        Some("deep-open") => {
            let dir = CString::new(args[2].as_str()).unwrap();
            let name = CString::new(args[3].as_str()).unwrap();
            let depth: usize = args[4].parse().unwrap();
            let file = CString::new(args[5].as_str()).unwrap();
            let create = std::env::var_os("AGENTMON_CREATE").is_some();
            // SAFETY: plain syscalls on valid C strings and owned fds.
            unsafe {
                let mut fd = libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                assert!(fd >= 0, "open {}: {}", args[2], errno());
                for _ in 0..depth {
                    if create {
                        libc::mkdirat(fd, name.as_ptr(), 0o755);
                    }
                    let next = libc::openat(fd, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                    if next < 0 {
                        // A directory on the way is refused (a path past
                        // PATH_MAX fails closed in a session).
                        report(errno());
                        return;
                    }
                    libc::close(fd);
                    fd = next;
                }
                let flags = if create {
                    libc::O_WRONLY | libc::O_CREAT
                } else {
                    libc::O_RDONLY
                };
                let f = libc::openat(fd, file.as_ptr(), flags, 0o644);
                report(if f >= 0 { 0 } else { errno() });
                if f >= 0 {
                    libc::close(f);
                }
                libc::close(fd);
            }
        }
        Some("denyloop") => {
            let secs: u64 = args[2].parse().unwrap();
            let start = std::time::Instant::now();
            let (mut opened, mut denied) = (0u64, 0u64);
            let stop = args.get(4).map(std::path::PathBuf::from);
            let mut i = 0u64;
            while start.elapsed().as_secs() < secs {
                i += 1;
                if i.is_multiple_of(256) && stop.as_ref().is_some_and(|p| p.exists()) {
                    break;
                }
                if try_open(&args[3]) == 0 {
                    opened += 1;
                } else {
                    denied += 1;
                }
            }
            println!("opened {opened} denied {denied}");
        }
        _ => {
            eprintln!("usage: actor opens DIR | tcp PORT | udp PORT | spawn N PROG [ARGS] | exec PROG [ARGS] | uring-open PATH | openloop N PATH | openrate RATE SECS PATH | execrate RATE SECS PROG [ARGS] | timeit N PREP CMD [ARGS]");
            std::process::exit(2);
        }
    }
}

/// One `IORING_OP_OPENAT` of `path` (read-only): the completion's result,
/// an fd or a negative errno.
fn uring_openat(path: &str) -> i32 {
    let path = CString::new(path).unwrap();
    let mut ring = io_uring::IoUring::new(4).expect("io_uring_setup");
    let op = io_uring::opcode::OpenAt::new(io_uring::types::Fd(libc::AT_FDCWD), path.as_ptr())
        .flags(libc::O_RDONLY)
        .build();
    // SAFETY: `path` outlives the submission, which completes below.
    unsafe { ring.submission().push(&op).expect("sq push") };
    ring.submit_and_wait(1).expect("io_uring_enter");
    let r = ring.completion().next().expect("completion").result();
    r
}
