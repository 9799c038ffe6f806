//! agentmon kernel programs.
//!
//! One module per hook family; each entry point is a thin wrapper around a
//! `try_*` function returning `Result`. Everything starts with the scope
//! check in [`scope`]: a task outside every agentmon session pays one map
//! lookup and returns.
#![no_std]
#![no_main]

mod dns;
mod enforce;
mod exec;
mod file;
mod fileops;
mod header;
mod kread;
mod lsm;
mod lsm_inode;
mod maps;
mod net;
mod path;
mod probe;
mod process;
mod scope;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in verified programs: the verifier rejects code that could
    // reach a panic. An infinite loop keeps the signature honest.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
