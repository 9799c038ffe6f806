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
            let path = CString::new(args[2].as_str()).unwrap();
            let mut ring = io_uring::IoUring::new(4).expect("io_uring_setup");
            let op =
                io_uring::opcode::OpenAt::new(io_uring::types::Fd(libc::AT_FDCWD), path.as_ptr())
                    .flags(libc::O_RDONLY)
                    .build();
            // SAFETY: `path` outlives the submission, which completes below.
            unsafe { ring.submission().push(&op).expect("sq push") };
            ring.submit_and_wait(1).expect("io_uring_enter");
            let cqe = ring.completion().next().expect("completion");
            assert!(
                cqe.result() >= 0,
                "io_uring openat failed: {}",
                cqe.result()
            );
            println!("fd {}", cqe.result());
        }
        Some("exec") => {
            // Replace this process (used to test tags across exec).
            let e = Command::new(&args[2]).args(&args[3..]).exec();
            panic!("exec {}: {e}", args[2]);
        }
        _ => {
            eprintln!("usage: actor opens DIR | tcp PORT | udp PORT | spawn N PROG [ARGS] | exec PROG [ARGS]");
            std::process::exit(2);
        }
    }
}
