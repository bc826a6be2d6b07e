//! The few process-level system calls std does not offer, each a thin, commented wrapper:
//! `-f` (setrlimit), `-u` (setuid), `-d` (fork and setsid), the effective user's name (the
//! PostgreSQL store's default user, as libpq takes it), local time (the syslog header) and the
//! monotonic clock (systemd's reload notification). The only other module that uses `unsafe` is
//! `shard::uring` (the io_uring event loop's ring and buffers).

use std::ffi::CString;
use std::io;

/// Raises (or sets) RLIMIT_NOFILE to `n`, as `-f/--file-descriptors`.
pub fn set_file_limit(n: u64) -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = n as libc::rlim_t;
    if lim.rlim_max < lim.rlim_cur {
        lim.rlim_max = lim.rlim_cur;
    }
    // SAFETY: `lim` is a valid rlimit; setrlimit only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Switches to `user` (its group and supplementary groups first), as `-u/--user`.
pub fn switch_user(user: &str) -> Result<(), String> {
    let name = CString::new(user).map_err(|_| format!("invalid user name '{user}'"))?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call; getpwnam returns a
    // pointer to static storage or null, and we copy the fields out before any other call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(format!("Could not find user '{user}'"));
    }
    // SAFETY: `pw` is non-null and points to a valid passwd record (see above).
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == uid {
        return Ok(());
    }
    if euid != 0 {
        return Err("Must be root to switch users.".into());
    }
    // SAFETY: plain system calls on integers and a valid C string; failures are checked.
    unsafe {
        if libc::setgid(gid) != 0
            || libc::initgroups(name.as_ptr(), gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(format!(
                "Could not switch to user '{user}': {}",
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Detaches into the background, as `-d/--daemon`. Must run before any thread is started:
/// only the calling thread survives a fork.
pub fn daemonize() -> io::Result<()> {
    // SAFETY: called while the process is single-threaded (documented precondition), so the
    // child has a consistent copy of every lock and allocation.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => {}
        // The parent's job is done; its listeners now belong to the child.
        _ => std::process::exit(0),
    }
    // SAFETY: setsid has no preconditions; in a fresh child it cannot fail with EPERM.
    if unsafe { libc::setsid() } == -1 {
        return Err(io::Error::last_os_error());
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: both descriptors are open; dup2 atomically replaces 0, 1 and 2.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    std::env::set_current_dir("/")?;
    Ok(())
}

/// The effective user's login name (libpq's default database user), or `$USER` if the
/// password database does not say.
pub fn effective_user_name() -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: passwd is a plain C struct of integers and pointers, for which all-zero bytes
    // are a valid value; getpwuid_r fills it before it is read.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into pwd and buf (of the given length) and sets out to &pwd
    // on success; pw_name then points into buf, which outlives its use here.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() || pwd.pw_name.is_null() {
        return std::env::var("USER").ok();
    }
    // SAFETY: on success pw_name is non-null (checked above) and points to a NUL-terminated
    // string inside `buf`, which is alive for this borrow.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// The local time of a Unix time, as `localtime_r` gives it: (month 0–11, day of the month,
/// hour, minute, second). For the syslog header, which glibc writes in local time.
pub fn local_time(unix_secs: i64) -> Option<(u32, u32, u32, u32, u32)> {
    let t = unix_secs as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value (integers and a null zone pointer).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: `t` and `tm` are valid for the call; localtime_r writes only into `tm`.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return None;
    }
    Some((
        tm.tm_mon.clamp(0, 11) as u32,
        tm.tm_mday as u32,
        tm.tm_hour as u32,
        tm.tm_min as u32,
        tm.tm_sec as u32,
    ))
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd's `MONOTONIC_USEC=` is read on.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
