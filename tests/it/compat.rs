//! Real, independent clients against the server: the libgearman CLIs
//! (`gearman`, `gearadmin`), Perl Gearman::Client/Gearman::Worker and Python
//! `gear`. Each test skips (with a line on stderr) when its tool is missing,
//! unless `GEARSHIFT_REQUIRE_COMPAT` is set, in which case it fails.
//! `scripts/install-test-deps.sh` installs them all.

use crate::util::*;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

fn gearman_cli() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    let have = *HAVE.get_or_init(|| find_tool("gearman").is_some());
    require_tool(have, "the `gearman` CLI (gearman-tools)")
}

fn gearadmin_cli() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    let have = *HAVE.get_or_init(|| find_tool("gearadmin").is_some());
    require_tool(have, "`gearadmin` (gearman-tools)")
}

fn perl_gearman() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    let have = *HAVE.get_or_init(|| {
        find_tool("perl").is_some()
            && Command::new("perl")
                .args(["-MGearman::Client", "-MGearman::Worker", "-e", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
    });
    require_tool(
        have,
        "Perl Gearman::Client/Gearman::Worker (libgearman-client-perl)",
    )
}

fn python_gear() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    let have = *HAVE.get_or_init(|| {
        find_tool("python3").is_some()
            && Command::new("python3")
                .args(["-c", "import gear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
    });
    require_tool(have, "Python `gear` (pip install gear)")
}

/// `gearman -h 127.0.0.1 -p <port> <args...>`
fn gearman(s: &Server, args: &[&str]) -> Command {
    let mut c = Command::new("gearman");
    c.args(["-h", "127.0.0.1", "-p", &s.port().to_string()])
        .args(args);
    c
}

/// Runs `gearadmin` with one option; returns (stdout, stderr).
fn gearadmin(s: &Server, args: &[&str]) -> (String, String) {
    let mut c = Command::new("gearadmin");
    c.args(["-h", "127.0.0.1", "-p", &s.port().to_string()])
        .args(args);
    let (st, out, err) = run_with_timeout(&mut c, LIMIT);
    assert!(st.success(), "gearadmin {args:?}: {st:?} {err}");
    (out, err)
}

/// Spawns a long-running child with piped output (killed on drop).
fn spawn(mut cmd: Command) -> (KillOnDrop, Output) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = collect_output(&mut child);
    (KillOnDrop(child), out)
}

/// Waits for a spawned child to finish successfully and returns its stdout.
#[track_caller]
fn finish(mut child: KillOnDrop, out: Output, what: &str) -> String {
    let st = wait_child(&mut child.0, LIMIT, what);
    let (o, e) = out.join();
    assert!(
        st.success(),
        "{what} failed ({st:?}); stdout: {o}\nstderr: {e}"
    );
    o
}

/// A raw worker for `func` that waits (event-driven, via NOOP) for a job
/// submitted by an external client, and grabs it with GRAB_JOB_UNIQ.
fn raw_worker_wait_job(w: &mut Conn) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let p = w
        .recv_with_timeout(LIMIT)
        .expect("NOOP for the external client's job");
    assert_eq!(p.ty, NOOP, "{p:?}");
    w.grab_uniq()
}

// ---------------------------------------------------------------------------
// gearman CLI (libgearman)
// ---------------------------------------------------------------------------

#[test]
fn cli_worker_and_client_foreground() {
    if !gearman_cli() {
        return;
    }
    let s = Server::start(&[]);
    let (worker, wout) = spawn(gearman(
        &s,
        &["-w", "-c", "1", "-f", "up", "--", "tr", "a-z", "A-Z"],
    ));
    let (st, out, err) = run_with_timeout(&mut gearman(&s, &["-f", "up", "hello"]), LIMIT);
    assert!(st.success(), "{err}");
    assert_eq!(out, "HELLO");
    finish(worker, wout, "gearman -w");
    let mut a = s.conn();
    assert_eq!(a.admin("status"), "up\t0\t0\t0\n.\n");
}

#[test]
fn cli_client_against_raw_worker_data_status_warning() {
    if !gearman_cli() {
        return;
    }
    let s = Server::start(&[]);
    let mut w = sleeping_worker(&s, &["rw"]);
    let (client, cout) = spawn(gearman(&s, &["-u", "U1", "-f", "rw", "payload"]));
    let (h, f, u, d) = raw_worker_wait_job(&mut w);
    assert_eq!(
        (f.as_slice(), u.as_slice(), d.as_slice()),
        (&b"rw"[..], &b"U1"[..], &b"payload"[..])
    );
    w.send(WORK_DATA, &[&h, b"part1"]);
    w.send(WORK_WARNING, &[&h, b"careful"]);
    w.send(WORK_STATUS, &[&h, b"1", b"2"]);
    w.send(WORK_COMPLETE, &[&h, b"done"]);
    let out = finish(client, cout, "gearman client");
    assert!(out.starts_with("part1done"), "{out:?}");
    assert!(out.contains("50% Complete"), "{out:?}");
}

#[test]
fn cli_client_dash_s_sends_empty_job() {
    if !gearman_cli() {
        return;
    }
    let s = Server::start(&[]);
    let mut w = sleeping_worker(&s, &["rw"]);
    let (client, cout) = spawn(gearman(&s, &["-s", "-f", "rw"]));
    let (h, _, _, d) = raw_worker_wait_job(&mut w);
    assert_eq!(d, b"");
    w.send(WORK_COMPLETE, &[&h, b"done"]);
    assert_eq!(finish(client, cout, "gearman -s"), "done");
}

#[test]
fn cli_client_sees_work_fail() {
    if !gearman_cli() {
        return;
    }
    let s = Server::start(&[]);
    let mut w = sleeping_worker(&s, &["rw"]);
    let mut cmd = gearman(&s, &["-f", "rw", "payload"]);
    let (mut client, cout) = spawn({
        cmd.stdin(Stdio::null());
        cmd
    });
    let (h, _, u, _) = raw_worker_wait_job(&mut w);
    // libgearman gives foreground CLI jobs a UUID unique.
    assert_eq!(u.len(), 36, "{}", show(&u));
    w.send(WORK_FAIL, &[&h]);
    let st = wait_child(&mut client.0, LIMIT, "gearman client");
    let (_, err) = cout.join();
    assert!(!st.success());
    assert!(err.contains("Job failed"), "{err}");
}

#[test]
fn cli_background_jobs_priorities_and_coalescing() {
    if !gearman_cli() {
        return;
    }
    let s = Server::start(&[]);
    for args in [
        &["-b", "-f", "bg", "x"][..],
        &["-b", "-I", "-f", "bg", "y"],
        &["-b", "-L", "-f", "bg", "z"],
        &["-b", "-u", "same", "-f", "bg", "1"],
        &["-b", "-u", "same", "-f", "bg", "2"],
    ] {
        let (st, out, err) = run_with_timeout(&mut gearman(&s, args), LIMIT);
        assert!(st.success(), "{args:?}: {err}");
        assert_eq!(out, "");
    }
    let mut a = s.conn();
    assert_eq!(a.admin("status"), "bg\t4\t0\t0\n.\n");
    assert_eq!(a.admin("prioritystatus"), "bg\t1\t2\t1\t0\n.\n");
    let mut w = s.conn();
    w.can_do(&["bg"]);
    assert_eq!(w.grab_uniq().3, b"y");
    let (_, _, u, d) = w.grab_uniq();
    assert_eq!(d, b"x");
    assert_eq!(
        u.len(),
        36,
        "libgearman gives background jobs a UUID unique"
    );
    assert_eq!(w.grab_uniq().3, b"1");
    assert_eq!(w.grab_uniq().3, b"z");
}

#[test]
fn cli_worker_against_raw_client() {
    if !gearman_cli() {
        return;
    }
    let s = Server::start(&[]);
    let (worker, wout) = spawn(gearman(&s, &["-w", "-c", "2", "-f", "cat", "--", "cat"]));
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "cat", "", b"in\0put");
    c.expect(WORK_COMPLETE, &[&h, b"in\0put"]);
    // Per-line WORK_DATA is not used here; a second job runs on the same worker.
    let h2 = c.submit(SUBMIT_JOB_HIGH, "cat", "u", b"again");
    c.expect(WORK_COMPLETE, &[&h2, b"again"]);
    finish(worker, wout, "gearman -w");
}

#[test]
fn cli_worker_line_mode_sends_work_data() {
    if !gearman_cli() {
        return;
    }
    let s = Server::start(&[]);
    let (worker, wout) = spawn(gearman(
        &s,
        &[
            "-w", "-c", "1", "-n", "-f", "lines", "--", "printf", "a\\nb\\n",
        ],
    ));
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "lines", "", b"in");
    let mut data = 0;
    loop {
        let p = c.recv();
        let a = p.argn(2);
        assert_eq!(a[0], h, "{p:?}");
        match p.ty {
            WORK_DATA => data += 1,
            WORK_COMPLETE => break,
            _ => panic!("unexpected {p:?}"),
        }
    }
    assert!(data >= 1, "no WORK_DATA forwarded");
    finish(worker, wout, "gearman -w -n");
}

#[test]
fn cli_worker_failing_command_sends_work_fail() {
    if !gearman_cli() {
        return;
    }
    let s = Server::start(&[]);
    let (worker, wout) = spawn(gearman(&s, &["-w", "-c", "1", "-f", "fl", "--", "false"]));
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "fl", "", b"in");
    c.expect(WORK_FAIL, &[&h]);
    drop(worker);
    drop(wout);
}

// ---------------------------------------------------------------------------
// gearadmin
// ---------------------------------------------------------------------------

#[test]
fn gearadmin_listings_match_raw_admin() {
    if !gearadmin_cli() {
        return;
    }
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "fa", "u1", b"");
    c.submit(SUBMIT_JOB_HIGH_BG, "fb", "u2", b"");
    c.submit(SUBMIT_JOB, "fa", "u3", b"");
    let mut w = s.conn();
    w.send(SET_CLIENT_ID, &[b"wid"]);
    w.can_do(&["fa", "fc"]);
    let mut a = s.conn();
    for (opt, cmd) in [
        ("--status", "status"),
        ("--priority-status", "prioritystatus"),
        ("--show-jobs", "show jobs"),
        ("--show-unique-jobs", "show unique jobs"),
    ] {
        let (out, _) = gearadmin(&s, &[opt]);
        assert_eq!(out, a.admin(cmd), "gearadmin {opt}");
    }
    let (out, _) = gearadmin(&s, &["--workers"]);
    assert!(out.ends_with("\n.\n"), "{out:?}");
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with(" 127.0.0.1 wid : fc fa"))
            .count(),
        1,
        "{out:?}"
    );
}

#[test]
fn gearadmin_single_line_commands() {
    if !gearadmin_cli() {
        return;
    }
    let s = Server::start(&[]);
    let (out, _) = gearadmin(&s, &["--getpid"]);
    assert_eq!(out, format!("{}\n", s.pid()));
    let mut a = s.conn();
    let v = a.admin("version");
    let (out, _) = gearadmin(&s, &["--server-version"]);
    assert_eq!(out, format!("{}", &v[3..]));
    let (out, _) = gearadmin(&s, &["--server-verbose"]);
    assert_eq!(out, "ERROR\n");
    // gearadmin sends CRLF, so the name arrives whole.
    let (out, _) = gearadmin(&s, &["--create-function", "newf"]);
    assert_eq!(out, "OK\n");
    assert_eq!(a.admin("status"), "newf\t0\t0\t0\n.\n");
    let (out, _) = gearadmin(&s, &["--drop-function", "newf"]);
    assert_eq!(out, "OK\n");
    assert_eq!(a.admin("status"), ".\n");
    let (out, err) = gearadmin(&s, &["--drop-function", "newf"]);
    assert_eq!(out, "");
    assert!(err.contains("function not found"), "{err:?}");
}

#[test]
fn gearadmin_cancel_job() {
    if !gearadmin_cli() {
        return;
    }
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "f", "", b"");
    let (out, _) = gearadmin(
        &s,
        &["--cancel-job", &String::from_utf8(h.clone()).unwrap()],
    );
    assert_eq!(out, "OK\n");
    c.expect(WORK_FAIL, &[&h]);
    let (out, err) = gearadmin(&s, &["--cancel-job", "H:none:1"]);
    assert_eq!(out, "");
    assert!(err.contains("UNKNOWN_JOB"), "{err:?}");
}

// ---------------------------------------------------------------------------
// Perl Gearman::Client / Gearman::Worker
// ---------------------------------------------------------------------------

const PERL_CLIENT: &str = r#"
use strict; use warnings;
use Gearman::Client;
$| = 1;
my ($port, $mode, $func, $arg, $uniq) = @ARGV;
my $c = Gearman::Client->new(job_servers => ["127.0.0.1:$port"], exceptions => ($mode eq 'exc' ? 1 : 0));
if ($mode eq 'bg') {
    my $h = $c->dispatch_background($func, $arg, { uniq => $uniq });
    print "handle $h\n";
    my $st = $c->get_status($h);
    print "known ", ($st->known ? 1 : 0), " running ", ($st->running ? 1 : 0), "\n";
    exit 0;
}
my %opts = (
    on_status    => sub { print "status $_[0]/$_[1]\n" },
    on_data      => sub { print "data ${$_[0]}\n" },
    on_warning   => sub { print "warning ${$_[0]}\n" },
    on_fail      => sub { print "fail\n" },
    on_exception => sub { print "exception $_[0]\n" },
);
$opts{uniq} = $uniq if defined $uniq;
my $r = $c->do_task($func, $arg, \%opts);
print defined $r ? "result $$r\n" : "no result\n";
"#;

const PERL_WORKER: &str = r#"
use strict; use warnings;
use Gearman::Worker;
$| = 1;
my ($port, $func, $jobs) = @ARGV;
my $w = Gearman::Worker->new(job_servers => ["127.0.0.1:$port"]);
my $n = 0;
$w->register_function($func => sub {
    my $job = shift;
    $n++;
    my $arg = $job->arg;
    print "job $arg\n";
    if ($arg eq 'fail') { return undef; }
    if ($arg eq 'exception') { $w->send_work_exception($job, "oops"); return undef; }
    $job->set_status(1, 4);
    $w->send_work_data($job, "chunk");
    return uc $arg;
});
$w->work(stop_if => sub { $n >= $jobs });
print "done $n\n";
"#;

fn perl(dir: &TempDir, script: &str, args: &[String]) -> Command {
    let path = dir.write(
        &format!(
            "{}.pl",
            if script == PERL_CLIENT {
                "client"
            } else {
                "worker"
            }
        ),
        script,
    );
    let mut c = Command::new("perl");
    c.arg(path).args(args);
    c
}

#[test]
fn perl_client_foreground_with_raw_worker() {
    if !perl_gearman() {
        return;
    }
    let s = Server::start(&[]);
    let dir = TempDir::new("perl");
    let mut w = sleeping_worker(&s, &["pf"]);
    let port = s.port().to_string();
    let (client, cout) = spawn(perl(
        &dir,
        PERL_CLIENT,
        &[port, "fg".into(), "pf".into(), "hello".into(), "pu".into()],
    ));
    let (h, f, u, d) = raw_worker_wait_job(&mut w);
    assert_eq!(
        (f.as_slice(), u.as_slice(), d.as_slice()),
        (&b"pf"[..], &b"pu"[..], &b"hello"[..])
    );
    w.send(WORK_DATA, &[&h, b"d1"]);
    w.send(WORK_WARNING, &[&h, b"w1"]);
    w.send(WORK_STATUS, &[&h, b"3", b"9"]);
    w.send(WORK_COMPLETE, &[&h, b"HELLO"]);
    let out = finish(client, cout, "perl client");
    assert_eq!(out, "data d1\nwarning w1\nstatus 3/9\nresult HELLO\n");
}

#[test]
fn perl_client_exception_and_fail() {
    if !perl_gearman() {
        return;
    }
    let s = Server::start(&[]);
    let dir = TempDir::new("perl");
    let mut w = sleeping_worker(&s, &["pe"]);
    let port = s.port().to_string();
    // With `exceptions => 1` the client asks OPTION_REQ and sees WORK_EXCEPTION.
    let (client, cout) = spawn(perl(
        &dir,
        PERL_CLIENT,
        &[port.clone(), "exc".into(), "pe".into(), "x".into()],
    ));
    let (h, _, _, _) = raw_worker_wait_job(&mut w);
    w.send(WORK_EXCEPTION, &[&h, b"boom"]);
    let out = finish(client, cout, "perl client");
    assert_eq!(out, "exception boom\nno result\n");
    // A plain WORK_FAIL.
    w.send(PRE_SLEEP, &[]);
    let (client, cout) = spawn(perl(
        &dir,
        PERL_CLIENT,
        &[port, "fg".into(), "pe".into(), "y".into()],
    ));
    let (h, _, _, _) = raw_worker_wait_job(&mut w);
    w.send(WORK_FAIL, &[&h]);
    let out = finish(client, cout, "perl client");
    assert_eq!(out, "fail\nno result\n");
}

#[test]
fn perl_worker_with_raw_client() {
    if !perl_gearman() {
        return;
    }
    let s = Server::start(&[]);
    let dir = TempDir::new("perl");
    let port = s.port().to_string();
    let (worker, wout) = spawn(perl(&dir, PERL_WORKER, &[port, "pw".into(), "4".into()]));
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "pw", "", b"hello");
    c.expect(WORK_STATUS, &[&h, b"1", b"4"]);
    c.expect(WORK_DATA, &[&h, b"chunk"]);
    c.expect(WORK_COMPLETE, &[&h, b"HELLO"]);
    let h = c.submit(SUBMIT_JOB, "pw", "", b"fail");
    c.expect(WORK_FAIL, &[&h]);
    let mut e = s.conn();
    e.send(OPTION_REQ, &[b"exceptions"]);
    e.expect(OPTION_RES, &[b"exceptions"]);
    let h = e.submit(SUBMIT_JOB, "pw", "", b"exception");
    e.expect(WORK_EXCEPTION, &[&h, b"oops"]);
    // A plain client sees WORK_FAIL with a trailing NUL instead.
    let h = c.submit(SUBMIT_JOB, "pw", "", b"exception");
    c.expect(WORK_FAIL, &[&h, b""]);
    let out = finish(worker, wout, "perl worker");
    assert_eq!(
        out,
        "job hello\njob fail\njob exception\njob exception\ndone 4\n"
    );
}

#[test]
fn perl_client_and_worker_end_to_end() {
    if !perl_gearman() {
        return;
    }
    let s = Server::start(&[]);
    let dir = TempDir::new("perl");
    let port = s.port().to_string();
    // A background job first (no worker yet): status is known, not running.
    let mut bg = perl(
        &dir,
        PERL_CLIENT,
        &[
            port.clone(),
            "bg".into(),
            "pp".into(),
            "later".into(),
            "bgu".into(),
        ],
    );
    let (st, out, err) = run_with_timeout(&mut bg, LIMIT);
    assert!(st.success(), "{err}");
    assert!(
        out.starts_with(&format!("handle 127.0.0.1:{port}//H:")),
        "{out:?}"
    );
    assert!(out.ends_with("known 1 running 0\n"), "{out:?}");
    let (worker, wout) = spawn(perl(
        &dir,
        PERL_WORKER,
        &[port.clone(), "pp".into(), "2".into()],
    ));
    let mut fg = perl(
        &dir,
        PERL_CLIENT,
        &[port, "fg".into(), "pp".into(), "now".into()],
    );
    let (st, out, err) = run_with_timeout(&mut fg, LIMIT);
    assert!(st.success(), "{err}");
    assert_eq!(out, "status 1/4\ndata chunk\nresult NOW\n");
    let out = finish(worker, wout, "perl worker");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["done 2", "job later", "job now"]);
}

// ---------------------------------------------------------------------------
// Python gear
// ---------------------------------------------------------------------------

const PY_CLIENT: &str = r#"
import sys, time, gear
port, mode, func, arg = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
uniq = sys.argv[5].encode() if len(sys.argv) > 5 else None
c = gear.Client('pyclient')
c.addServer('127.0.0.1', port)
c.waitForServer(timeout=10)
if mode == 'exc':
    assert c.setOption('exceptions')
job = gear.Job(func.encode(), arg.encode(), unique=uniq)
prec = {'high': gear.PRECEDENCE_HIGH, 'low': gear.PRECEDENCE_LOW}.get(mode, gear.PRECEDENCE_NORMAL)
c.submitJob(job, background=(mode in ('bg', 'high', 'low')), precedence=prec)
print('handle', job.handle.decode(), flush=True)
if mode in ('bg', 'high', 'low'):
    c.shutdown()
    sys.exit(0)
deadline = time.time() + 15
while not job.complete and time.time() < deadline:
    time.sleep(0.005)
print('complete', job.complete, 'failure', job.failure)
print('data', b'|'.join(job.data).decode())
print('status', job.numerator, job.denominator)
print('exception', job.exception)
c.shutdown()
"#;

const PY_WORKER: &str = r#"
import sys, gear
port, func, jobs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
w = gear.Worker('pyworker')
w.addServer('127.0.0.1', port)
w.waitForServer(timeout=10)
w.registerFunction(func)
for _ in range(jobs):
    job = w.getJob()
    print('job', job.name, job.unique.decode() if job.unique else '-', job.arguments.decode(), flush=True)
    if job.arguments == b'fail':
        job.sendWorkFail()
    elif job.arguments == b'exception':
        job.sendWorkException(b'kaboom')
    else:
        job.sendWorkStatus(1, 2)
        job.sendWorkData(b'chunk')
        job.sendWorkComplete(job.arguments.upper())
w.shutdown()
print('done', flush=True)
"#;

const PY_ADMIN: &str = r#"
import sys, gear
port = int(sys.argv[1])
c = gear.Client('pyadmin')
c.addServer('127.0.0.1', port)
c.waitForServer(timeout=10)
conn = c.active_connections[0]
for req in (gear.StatusAdminRequest(), gear.ShowJobsAdminRequest(), gear.ShowUniqueJobsAdminRequest()):
    conn.sendAdminRequest(req, timeout=10)
    sys.stdout.write(req.response.decode())
c.shutdown()
"#;

fn python(dir: &TempDir, name: &str, script: &str, args: &[String]) -> Command {
    let path = dir.write(name, script);
    let mut c = Command::new("python3");
    c.arg(path).args(args);
    c
}

#[test]
fn gear_client_with_raw_worker() {
    if !python_gear() {
        return;
    }
    let s = Server::start(&[]);
    let dir = TempDir::new("gear");
    let mut w = sleeping_worker(&s, &["gf"]);
    let port = s.port().to_string();
    let args = [port, "fg".into(), "gf".into(), "hello".into(), "gu".into()];
    let (client, cout) = spawn(python(&dir, "client.py", PY_CLIENT, &args));
    let (h, f, u, d) = raw_worker_wait_job(&mut w);
    assert_eq!(
        (f.as_slice(), u.as_slice(), d.as_slice()),
        (&b"gf"[..], &b"gu"[..], &b"hello"[..])
    );
    w.send(WORK_DATA, &[&h, b"d1"]);
    w.send(WORK_STATUS, &[&h, b"2", b"5"]);
    w.send(WORK_COMPLETE, &[&h, b"HELLO"]);
    let out = finish(client, cout, "gear client");
    let hs = String::from_utf8(h).unwrap();
    assert_eq!(
        out,
        format!(
            "handle {hs}\ncomplete True failure False\ndata d1|HELLO\nstatus b'2' b'5'\nexception None\n"
        )
    );
}

#[test]
fn gear_client_exception_with_and_without_option() {
    if !python_gear() {
        return;
    }
    let s = Server::start(&[]);
    let dir = TempDir::new("gear");
    let mut w = sleeping_worker(&s, &["ge"]);
    let port = s.port().to_string();
    // Two clients coalesced on one unique: one asked for exceptions.
    let (c1, o1) = spawn(python(
        &dir,
        "c1.py",
        PY_CLIENT,
        &[
            port.clone(),
            "exc".into(),
            "ge".into(),
            "x".into(),
            "U".into(),
        ],
    ));
    let (h, _, _, _) = raw_worker_wait_job(&mut w);
    let (c2, o2) = spawn(python(
        &dir,
        "c2.py",
        PY_CLIENT,
        &[port, "fg".into(), "ge".into(), "x".into(), "U".into()],
    ));
    // Wait until the second client is attached (it reports 2 waiting clients).
    let mut q = s.conn();
    wait_until("the second gear client is attached", || {
        q.send(GET_STATUS_UNIQUE, &[b"U"]);
        q.recv().args()[5] == b"2"
    });
    w.send(WORK_EXCEPTION, &[&h, b"boom"]);
    let hs = String::from_utf8(h).unwrap();
    let out1 = finish(c1, o1, "gear client (exceptions)");
    assert_eq!(
        out1,
        format!(
            "handle {hs}\ncomplete True failure True\ndata \nstatus None None\nexception b'boom'\n"
        )
    );
    let out2 = finish(c2, o2, "gear client");
    assert_eq!(
        out2,
        format!(
            "handle {hs}\ncomplete True failure True\ndata \nstatus None None\nexception None\n"
        )
    );
}

#[test]
fn gear_worker_with_raw_client() {
    if !python_gear() {
        return;
    }
    let s = Server::start(&[]);
    let dir = TempDir::new("gear");
    let port = s.port().to_string();
    let (worker, wout) = spawn(python(
        &dir,
        "worker.py",
        PY_WORKER,
        &[port, "gw".into(), "3".into()],
    ));
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "gw", "wu", b"hello");
    c.expect(WORK_STATUS, &[&h, b"1", b"2"]);
    c.expect(WORK_DATA, &[&h, b"chunk"]);
    c.expect(WORK_COMPLETE, &[&h, b"HELLO"]);
    let h = c.submit(SUBMIT_JOB, "gw", "", b"fail");
    c.expect(WORK_FAIL, &[&h]);
    c.send(OPTION_REQ, &[b"exceptions"]);
    c.expect(OPTION_RES, &[b"exceptions"]);
    let h = c.submit(SUBMIT_JOB, "gw", "", b"exception");
    c.expect(WORK_EXCEPTION, &[&h, b"kaboom"]);
    let out = finish(worker, wout, "gear worker");
    // gear grabs with GRAB_JOB_UNIQ, so it sees the unique (`-`: empty).
    assert_eq!(
        out,
        "job gw wu hello\njob gw - fail\njob gw - exception\ndone\n"
    );
}

#[test]
fn gear_background_priorities_and_coalescing() {
    if !python_gear() {
        return;
    }
    let s = Server::start(&[]);
    let dir = TempDir::new("gear");
    let port = s.port().to_string();
    let mut handles = Vec::new();
    for (mode, uniq) in [("bg", "a"), ("high", "b"), ("low", "c"), ("bg", "a")] {
        let mut cmd = python(
            &dir,
            "client.py",
            PY_CLIENT,
            &[
                port.clone(),
                mode.into(),
                "gb".into(),
                uniq.into(),
                uniq.into(),
            ],
        );
        let (st, out, err) = run_with_timeout(&mut cmd, LIMIT);
        assert!(st.success(), "{err}");
        handles.push(
            out.trim_end()
                .strip_prefix("handle ")
                .expect(&out)
                .to_string(),
        );
    }
    assert_eq!(handles[0], handles[3], "same unique coalesces");
    let mut a = s.conn();
    assert_eq!(a.admin("prioritystatus"), "gb\t1\t1\t1\t0\n.\n");
    let (worker, wout) = spawn(python(
        &dir,
        "worker.py",
        PY_WORKER,
        &[port, "gb".into(), "3".into()],
    ));
    let out = finish(worker, wout, "gear worker");
    assert_eq!(out, "job gb b b\njob gb a a\njob gb c c\ndone\n");
}

#[test]
fn gear_client_and_worker_end_to_end() {
    if !python_gear() {
        return;
    }
    let s = Server::start(&[]);
    let dir = TempDir::new("gear");
    let port = s.port().to_string();
    let (worker, wout) = spawn(python(
        &dir,
        "worker.py",
        PY_WORKER,
        &[port.clone(), "ge2e".into(), "1".into()],
    ));
    let mut cmd = python(
        &dir,
        "client.py",
        PY_CLIENT,
        &[port, "fg".into(), "ge2e".into(), "abc".into()],
    );
    let (st, out, err) = run_with_timeout(&mut cmd, LIMIT);
    assert!(st.success(), "{err}");
    assert!(
        out.ends_with(
            "complete True failure False\ndata chunk|ABC\nstatus b'1' b'2'\nexception None\n"
        ),
        "{out:?}"
    );
    finish(worker, wout, "gear worker");
}

#[test]
fn gear_admin_requests_match_raw_admin() {
    if !python_gear() {
        return;
    }
    let s = Server::start(&[]);
    let dir = TempDir::new("gear");
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f1", "x", b"");
    c.submit(SUBMIT_JOB_BG, "f2", "y", b"");
    let mut a = s.conn();
    let want = format!(
        "{}{}{}",
        a.admin("status"),
        a.admin("show jobs"),
        a.admin("show unique jobs")
    );
    let mut cmd = python(&dir, "admin.py", PY_ADMIN, &[s.port().to_string()]);
    let (st, out, err) = run_with_timeout(&mut cmd, LIMIT);
    assert!(st.success(), "{err}");
    assert_eq!(out, want);
}
