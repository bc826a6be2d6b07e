//! systemd's service notifications (sd_notify(3)) without libsystemd: under a unit of
//! `Type=notify`, systemd names a Unix datagram socket in `$NOTIFY_SOCKET` (a path, or an
//! abstract name when it starts with `@`), and the service sends it newline-separated
//! `KEY=value` assignments. gearshiftd sends `READY=1` once its listeners are bound and its
//! shards run, `RELOADING=1` then `READY=1` around a SIGHUP's log reopen, and `STOPPING=1`
//! when a signal stops it. Without `$NOTIFY_SOCKET` every call does nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

/// The socket systemd listens on, read once from the environment.
static TARGET: OnceLock<Option<Target>> = OnceLock::new();

struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// `$NOTIFY_SOCKET` as given, for messages.
    name: String,
}

/// True when the process was started with `$NOTIFY_SOCKET` set, that is, under a systemd unit
/// of `Type=notify` (or by anything else speaking the protocol): the supervisor then tracks
/// this process, so it must not fork away from it.
pub fn supervised() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

/// Sends `state` (for example `"READY=1"`) to `$NOTIFY_SOCKET`. Without it, does nothing;
/// a socket that cannot be reached is logged once per call as a warning and otherwise
/// ignored, as sd_notify's callers do.
pub fn send(state: &str) {
    let target = TARGET.get_or_init(|| match open() {
        Ok(t) => t,
        Err(e) => {
            log::warn!("$NOTIFY_SOCKET cannot be used: {e}");
            None
        }
    });
    if let Some(t) = target
        && let Err(e) = t.socket.send_to_addr(state.as_bytes(), &t.addr)
    {
        log::warn!("could not notify {}: {e}", t.name);
    }
}

/// `RELOADING=1` with the time it started, as systemd 253 and later ask of it
/// (`MONOTONIC_USEC`, CLOCK_MONOTONIC in microseconds); older ones ignore the second line.
pub fn reloading() -> String {
    format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        crate::sys::monotonic_usec()
    )
}

fn open() -> io::Result<Option<Target>> {
    let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(None);
    };
    let name = name.to_string_lossy().into_owned();
    if name.is_empty() {
        return Ok(None);
    }
    let addr = address(&name)?;
    Ok(Some(Target {
        socket: UnixDatagram::unbound()?,
        addr,
        name,
    }))
}

/// The address `$NOTIFY_SOCKET` names: a filesystem path (starting with `/`), or, starting
/// with `@`, a name in Linux's abstract namespace (the `@` stands for the leading NUL).
fn address(name: &str) -> io::Result<SocketAddr> {
    if let Some(abstract_name) = name.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            return SocketAddr::from_abstract_name(abstract_name.as_bytes());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = abstract_name;
            return Err(io::Error::other(format!(
                "{name}: abstract socket names exist on Linux only"
            )));
        }
    }
    if name.starts_with('/') {
        return SocketAddr::from_pathname(name);
    }
    Err(io::Error::other(format!(
        "{name}: neither a path nor an abstract name (@...)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        let a = address("/run/systemd/notify").unwrap();
        assert_eq!(
            a.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let a = address("@gearshift/notify").unwrap();
            assert_eq!(a.as_abstract_name(), Some(&b"gearshift/notify"[..]));
        }
        assert!(address("vsock:2:1234").is_err());
    }

    #[test]
    fn reloading_carries_the_monotonic_time() {
        let r = reloading();
        let usec: u64 = r
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
    }
}
