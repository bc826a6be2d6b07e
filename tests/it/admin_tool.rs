//! The admin side of the `gearshift` tool against the server under test: `gearshift admin`
//! with gearadmin's flags, compared byte for byte with libgearman's `gearadmin` run against the
//! same server; the `--json` views, parsed back with Python's json module; the views gearadmin
//! has that the tables did not (priority status, pid, verbose) and the store's health; and
//! errors that say in one line what failed and what was awaited.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(20);

/// `gearshift --servers <servers> args...`
fn gs(servers: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gearshift"));
    c.env_remove("GEARSHIFT_SERVERS")
        .env_remove("RUST_LOG")
        .args(["--servers", servers])
        .args(args);
    c
}

/// `gearshift args...` without --servers.
fn gs_bare(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gearshift"));
    c.env_remove("GEARSHIFT_SERVERS")
        .env_remove("RUST_LOG")
        .args(args);
    c
}

/// Runs to completion; returns (exit code, stdout, stderr).
fn run(mut cmd: Command) -> (i32, String, String) {
    let (st, out, err) = run_with_timeout(&mut cmd, LIMIT);
    (st.code().expect("exited"), out, err)
}

fn sv(s: &Server) -> String {
    s.addr().to_string()
}

fn gearadmin_present() -> bool {
    require_tool(
        find_tool("gearadmin").is_some(),
        "`gearadmin` (gearman-tools)",
    )
}

fn python_present() -> bool {
    require_tool(find_tool("python3").is_some(), "python3 (for parsing JSON)")
}

/// `gearadmin -h 127.0.0.1 -p <port> args...`: (exit code, stdout, stderr).
fn gearadmin(s: &Server, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new("gearadmin");
    c.args(["-h", "127.0.0.1", "-p", &s.port().to_string()])
        .args(args);
    run(c)
}

/// `gearshift admin -h 127.0.0.1 -p <port> args...`: (exit code, stdout, stderr).
fn gs_admin(s: &Server, args: &[&str]) -> (i32, String, String) {
    let port = s.port().to_string();
    let mut all = vec!["admin", "-h", "127.0.0.1", "-p", &port];
    all.extend_from_slice(args);
    run(gs_bare(&all))
}

/// Parses `doc` with Python's json module and prints `expr` of it (`d` is the document) as
/// compact JSON with sorted keys; panics if `doc` is not one valid JSON document.
fn py(doc: &str, expr: &str) -> String {
    let prog = format!(
        "import json,sys\nd=json.loads(sys.stdin.read())\n\
         print(json.dumps({expr}, sort_keys=True, separators=(',',':')))"
    );
    let mut child = Command::new("python3")
        .args(["-c", &prog])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "not valid JSON: {doc:?}: {err}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

/// Drops the lines of connections that set no client id and registered nothing (the admin
/// tools' own connections, whose numbers differ from run to run).
fn without_anonymous(workers: &str) -> String {
    workers
        .lines()
        .filter(|l| !l.ends_with(" - :"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A server holding jobs of every priority, unique ids, a worker with an id and a client with
/// one: something in every listing. Returns the connections that keep it so.
fn populated(s: &Server) -> Vec<Conn> {
    let mut c = s.conn();
    c.send(SET_CLIENT_ID, &[b"submitter"]);
    c.submit(SUBMIT_JOB_BG, "fa", "u1", b"");
    c.submit(SUBMIT_JOB_HIGH_BG, "fb", "u2", b"");
    c.submit(SUBMIT_JOB_LOW_BG, "fa", "u4", b"x");
    c.submit(SUBMIT_JOB, "fa", "u3", b"");
    let mut w = s.conn();
    w.send(SET_CLIENT_ID, &[b"wid"]);
    w.can_do(&["fa", "fc"]);
    vec![c, w]
}

#[test]
fn admin_flags_print_what_gearadmin_prints() {
    if !gearadmin_present() {
        return;
    }
    let s = Server::start(&[]);
    let _keep = populated(&s);
    for flags in [
        &["--status"][..],
        &["--priority-status"],
        &["--show-jobs"],
        &["--show-unique-jobs"],
        &["--getpid"],
        &["--server-version"],
        &["--server-verbose"],
        // Several at once run in gearadmin's order, whatever the order of the flags.
        &[
            "--status",
            "--getpid",
            "--server-version",
            "--priority-status",
        ],
        &["--show-unique-jobs", "--show-jobs", "--server-verbose"],
    ] {
        let (code, want, err) = gearadmin(&s, flags);
        assert_eq!(code, 0, "gearadmin {flags:?}: {err}");
        let (code, got, err) = gs_admin(&s, flags);
        assert_eq!(code, 0, "gearshift admin {flags:?}: {err}");
        assert_eq!(got, want, "gearshift admin {flags:?}");
        assert!(got.len() > 2, "{flags:?} shows something: {got:?}");
    }
    // workers: the same, but for each tool's own connection.
    let (_, want, _) = gearadmin(&s, &["--workers"]);
    let (code, got, err) = gs_admin(&s, &["--workers"]);
    assert_eq!(code, 0, "{err}");
    assert!(got.ends_with("\n.\n"), "{got:?}");
    assert!(got.contains(" 127.0.0.1 wid : "), "{got:?}");
    assert_eq!(without_anonymous(&got), without_anonymous(&want));

    // Changes: create, then drop, then the refusals. gearadmin prints them on stderr (and
    // exits 0); gearshift prints the same words and exits 1.
    let (_, want, _) = gearadmin(&s, &["--create-function", "newf", "--status"]);
    let (code, got, err) = gs_admin(&s, &["--status", "--create-function", "newf2"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        want.starts_with("OK\n") && got.starts_with("OK\n"),
        "{got:?}"
    );
    assert_eq!(got.replace("newf2\t0\t0\t0\n", ""), want, "{got:?}");
    for f in ["newf", "newf2"] {
        let (code, got, err) = gs_admin(&s, &["--drop-function", f]);
        assert_eq!((code, got.as_str()), (0, "OK\n"), "{err}");
    }
    for flags in [
        &["--drop-function", "newf"][..],
        &["--cancel-job", "H:none:1"],
    ] {
        let (_, want_out, want_err) = gearadmin(&s, flags);
        let (code, got, err) = gs_admin(&s, flags);
        assert_eq!(code, 1, "{flags:?}: {err}");
        assert_eq!(got, want_out, "{flags:?}");
        assert_eq!(
            err.trim_end(),
            want_err.trim_end(),
            "{flags:?}: the same message"
        );
        assert!(err.starts_with("Error: "), "{err:?}");
    }
}

#[test]
fn admin_flags_choose_the_server_and_refuse_what_cannot_be_done() {
    let s = Server::start(&[]);
    let port = s.port().to_string();
    // -p alone: gearadmin's default host, localhost.
    let (code, out, err) = run(gs_bare(&["admin", "-p", &port, "--getpid"]));
    assert_eq!((code, out), (0, format!("{}\n", s.pid())), "{err}");
    // Without -h/-p, the servers of --servers.
    let (code, out, err) = run(gs(&sv(&s), &["admin", "--getpid"]));
    assert_eq!((code, out), (0, format!("{}\n", s.pid())), "{err}");
    // Usage errors (2): no action, both ways of naming the server, a port that is no number,
    // -S without a CA, --json.
    for args in [
        &["admin", "-p", &port][..],
        &["--servers", "127.0.0.1", "admin", "-p", &port, "--status"],
        &["admin", "-p", "gearman", "--status"],
        &["admin", "-p", &port, "-S", "--status"],
        &["--json", "admin", "-p", &port, "--status"],
    ] {
        let (code, out, err) = run(gs_bare(args));
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // --queue, which gearadmin does not have: the store's health, or gearmand's refusal.
    let (code, out, err) = gs_admin(&s, &["--queue"]);
    if is_gearmand() {
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        assert!(err.starts_with("Error: UNKNOWN_COMMAND"), "{err}");
    } else {
        assert_eq!((code, out.as_str()), (0, "builtin\n"), "{err}");
    }
    // No server: one line naming it and the command, exit 3.
    let dead = free_port().to_string();
    let (code, out, err) = run(gs_bare(&["admin", "-p", &dead, "--status", "--workers"]));
    assert_eq!((code, out.as_str()), (3, ""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "gearshift: cannot connect to localhost:{dead} to send \"workers\""
        )),
        "{err}"
    );
}

#[test]
fn new_views_priority_status_pid_verbose_queue() {
    let s = Server::start(&[]);
    let _keep = populated(&s);
    let (code, out, err) = run(gs(&sv(&s), &["priority-status"]));
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["FUNCTION", "HIGH", "NORMAL", "LOW", "WORKERS"],
            vec!["fa", "0", "2", "1", "1"],
            vec!["fb", "1", "0", "0", "0"],
            vec!["fc", "0", "0", "0", "1"],
        ],
        "{out}"
    );
    let (code, out, err) = run(gs(&sv(&s), &["pid"]));
    assert_eq!((code, out), (0, format!("{}\n", s.pid())), "{err}");
    let (code, out, err) = run(gs(&sv(&s), &["verbose"]));
    assert_eq!((code, out.as_str()), (0, "ERROR\n"), "{err}");
    let (code, out, err) = run(gs(&sv(&s), &["queue"]));
    if is_gearmand() {
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        assert!(err.contains("refused \"queue\": UNKNOWN_COMMAND"), "{err}");
    } else {
        assert_eq!((code, out.as_str()), (0, "builtin\n"), "{err}");
    }
    // Two servers: a table with a SERVER column.
    let two = format!("{},localhost:{}", sv(&s), s.port());
    let (code, out, err) = run(gs(&two, &["pid"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("SERVER"), "{out}");
    assert!(out.contains(&format!("{}  {}", sv(&s), s.pid())), "{out}");
}

#[test]
fn json_views_parse_back() {
    if !python_present() {
        return;
    }
    let s = Server::start(&[]);
    let a = sv(&s);
    let mut keep = populated(&s);
    // A function name and a unique id that need escaping: quote, backslash, control
    // characters, and a byte that is not UTF-8.
    let mut c = s.conn();
    c.send(
        SUBMIT_JOB_BG,
        &[b"q\"f\\n", b"u\"\\\x01\x1f\x7f\xff-end", b""],
    );
    c.expect_type(JOB_CREATED);
    keep.push(c);

    let json = |args: &[&str]| {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (code, out, err) = run(gs(&a, &all));
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(out.lines().count(), 1, "one line: {out}");
        out
    };
    let doc = json(&["status"]);
    assert_eq!(
        py(&doc, "d"),
        format!(
            "[{{\"functions\":[\
             {{\"function\":\"fa\",\"queued\":3,\"running\":0,\"total\":3,\"workers\":1}},\
             {{\"function\":\"fb\",\"queued\":1,\"running\":0,\"total\":1,\"workers\":0}},\
             {{\"function\":\"fc\",\"queued\":0,\"running\":0,\"total\":0,\"workers\":1}},\
             {{\"function\":\"q\\\"f\\\\n\",\"queued\":1,\"running\":0,\"total\":1,\"workers\":0}}\
             ],\"server\":\"{a}\"}}]"
        )
    );
    let doc = json(&["priority-status"]);
    assert_eq!(
        py(
            &doc,
            "[(f['function'],f['high'],f['normal'],f['low'],f['workers']) for f in d[0]['functions']]"
        ),
        r#"[["fa",0,2,1,1],["fb",1,0,0,0],["fc",0,0,0,1],["q\"f\\n",0,1,0,0]]"#
    );
    let doc = json(&["jobs", "--unique"]);
    assert_eq!(
        py(&doc, "sorted(d[0]['unique'])"),
        r#"["u\"\\\u0001\u001f\u007f\ufffd-end","u1","u2","u3","u4"]"#
    );
    let doc = json(&["jobs"]);
    assert_eq!(
        py(
            &doc,
            "sorted((j['retries'],j['ignored'],j['queued'],j['handle'].startswith('H:')) for j in d[0]['jobs'])"
        ),
        "[[0,false,false,true],[0,false,true,true],[0,false,true,true],[0,false,true,true],[0,false,true,true]]"
    );
    let doc = json(&["workers"]);
    assert_eq!(
        py(
            &doc,
            "sorted((w['client_id'],sorted(w['functions']),w['ip'],w['fd'].isdigit()) for w in d[0]['workers'] if w['client_id']!='-')"
        ),
        r#"[["submitter",[],"127.0.0.1",true],["wid",["fa","fc"],"127.0.0.1",true]]"#
    );
    assert_eq!(
        py(&json(&["pid"]), "d"),
        format!("[{{\"pid\":{},\"server\":\"{a}\"}}]", s.pid())
    );
    assert_eq!(
        py(&json(&["verbose"]), "d"),
        format!("[{{\"server\":\"{a}\",\"verbose\":\"ERROR\"}}]")
    );
    assert_eq!(
        py(&json(&["version"]), "d[0]['version']"),
        py(
            &format!("\"{}\"", run(gs(&a, &["version"])).1.trim_end()),
            "d"
        )
    );
    assert_eq!(
        py(&json(&["job", "--unique", "u1"]), "d"),
        format!(
            "{{\"denominator\":0,\"known\":true,\"numerator\":0,\"running\":false,\"server\":\"{a}\",\"waiting\":0}}"
        )
    );
    if !is_gearmand() {
        assert_eq!(
            py(&json(&["queue"]), "d"),
            format!("[{{\"failure\":null,\"ok\":true,\"queue\":\"builtin\",\"server\":\"{a}\"}}]")
        );
    }
    assert_eq!(
        py(&json(&["create", "made"]), "d"),
        format!("[{{\"ok\":true,\"server\":\"{a}\"}}]")
    );
    // --watch: a document per refresh, one per line.
    let (code, out, err) = run(gs(
        &a,
        &["--json", "status", "--watch", "0.05", "--iterations", "2"],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    for l in out.lines() {
        assert_eq!(py(l, "len(d[0]['functions'])"), "5");
    }

    // A server that fails is in the document with why, and sets the exit code.
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, out, err) = run(gs(&format!("{a},{dead}"), &["--json", "status"]));
    assert_eq!(code, 3, "{err}");
    assert_eq!(
        py(
            &out,
            "[(x['server'], 'functions' in x, 'error' in x) for x in d]"
        ),
        format!("[[\"{a}\",true,false],[\"{dead}\",false,true]]")
    );
    assert_eq!(
        py(&out, "d[1]['error']"),
        py(
            &format!(
                "\"{}\"",
                err.trim_end()
                    .trim_start_matches("gearshift: ")
                    .replace('"', "\\\"")
            ),
            "d"
        ),
        "the same words as on stderr"
    );
    let (code, out, err) = run(gs(&a, &["--json", "drop", "never-seen"]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        py(
            &out,
            "[(x['server'], 'not found' in x['error']) for x in d]"
        ),
        format!("[[\"{a}\",true]]")
    );
}

#[test]
fn errors_say_what_failed_and_what_was_awaited() {
    // A listener that never answers: the connection is made, the answer never comes.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute = silent.local_addr().unwrap().to_string();
    for (args, what) in [
        (&["-t", "0.3", "status"][..], "status"),
        (&["-t", "0.3", "priority-status"], "prioritystatus"),
        (&["-t", "0.3", "jobs", "--unique"], "show unique jobs"),
        (&["-t", "0.3", "drop", "f"], "drop function f"),
        (&["-t", "0.3", "admin", "--getpid", "--status"], "getpid"),
    ] {
        let (code, out, err) = run(gs(&mute, args));
        assert_eq!((code, out.as_str()), (4, ""), "{args:?}: {err}");
        assert_eq!(
            err,
            format!("gearshift: no answer from {mute} to \"{what}\" within 0.3 s\n"),
            "{args:?}"
        );
    }
    let s = Server::start(&[]);
    let (code, _, err) = run(gs(&sv(&s), &["-t", "0.3", "submit", "-f", "nobody", "x"]));
    assert_eq!(code, 4, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("gearshift: no result for the \"nobody\" job H:")
            && err.ends_with(&format!(" on {} within 0.3 s\n", sv(&s))),
        "{err}"
    );
    // Refused connections: every server named once, with the command.
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = run(gs(&dead, &["submit", "-f", "f", "x"]));
    assert_eq!(code, 3, "{err}");
    assert_eq!(err.matches(&dead).count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("gearshift: no job server reachable: {dead}: ")),
        "{err}"
    );
    let (code, _, err) = run(gs(&dead, &["workers"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.starts_with(&format!(
            "gearshift: cannot connect to {dead} to send \"workers\": "
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // A refusal names the server and the command once.
    let (code, _, err) = run(gs(&sv(&s), &["cancel", "H:none:1"]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        format!(
            "gearshift: {} refused \"cancel job H:none:1\": UNKNOWN_JOB\n",
            sv(&s)
        )
    );
    drop(silent);
}

#[test]
fn queue_shows_the_stores_health() {
    if skip_under_gearmand("gearshiftd's `queue` command") {
        return;
    }
    let dir = TempDir::new("admin-tool-queue");
    let path = dir.path().join("queue.db");
    let db = format!("--libsqlite3-db={}", path.display());
    let s = Server::start(&["-q", "libsqlite3", &db]);
    let store = format!("libsqlite3 {} (table gearman_queue)", path.display());
    let (code, out, err) = run(gs(&sv(&s), &["queue"]));
    assert_eq!((code, out), (0, format!("{store} ok\n")), "{err}");
    let (code, out, err) = gs_admin(&s, &["--queue"]);
    assert_eq!((code, out), (0, format!("{store} ok\n")), "{err}");
    if python_present() {
        let (code, out, err) = run(gs(&sv(&s), &["--json", "queue"]));
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            py(&out, "[(x['queue'], x['ok'], x['failure']) for x in d]"),
            py(&format!("[[\"{store}\", true, null]]"), "d")
        );
    }
}
