//! The text admin protocol (PROTOCOL.md §2): splitting a line into a command, and the fixed
//! replies. Listings are rendered by the server, which holds the data.

/// At most this many space-separated tokens; more closes the connection (§1.1).
pub const MAX_TOKENS: usize = 5;

/// A parsed admin command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `workers`
    Workers,
    /// `status`
    Status,
    /// `prioritystatus`
    PriorityStatus,
    /// `show jobs`
    ShowJobs,
    /// `show unique jobs`
    ShowUniqueJobs,
    /// `cancel job <handle>`
    CancelJob(&'a [u8]),
    /// `create function <name>`
    CreateFunction(&'a [u8]),
    /// `drop function <name>`
    DropFunction(&'a [u8]),
    /// `maxqueue <function> [all | high normal [low]]`, the limits per priority.
    MaxQueue(&'a [u8], [u32; 3]),
    /// `getpid`
    GetPid,
    /// `verbose`
    Verbose,
    /// `version`
    Version,
    /// `queue`: the persistent queue's type and state (gearshiftd only).
    Queue,
    /// `shutdown` or `shutdown graceful`
    Shutdown {
        /// Wait for the jobs to finish.
        graceful: bool,
    },
    /// A fixed error reply, already formatted (line end included).
    Reply(String),
}

/// Too many tokens on one line: the connection is closed.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyTokens;

/// Splits on runs of spaces; a leading space yields an empty first token, as gearmand does.
pub fn tokens(line: &[u8]) -> Result<smallvec::SmallVec<[&[u8]; MAX_TOKENS]>, TooManyTokens> {
    let mut out = smallvec::SmallVec::new();
    if line.first() == Some(&b' ') {
        out.push(&line[..0]);
    }
    for t in line.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
        if out.len() == MAX_TOKENS {
            return Err(TooManyTokens);
        }
        out.push(t);
    }
    if out.is_empty() {
        out.push(&line[..0]);
    }
    Ok(out)
}

/// gearmand's answer to a command it does not know, named by its first token.
pub fn unknown(first: &[u8]) -> String {
    format!(
        "ERR UNKNOWN_COMMAND Unknown+server+command{}\r\n",
        String::from_utf8_lossy(first)
    )
}

fn incomplete(command: &str) -> String {
    format!(
        "ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+{command}\r\n"
    )
}

/// A maxqueue value as gearmand reads it: C's `atoi` (so `4294967297` is 1), negatives 0.
fn queue_limit(s: &[u8]) -> u32 {
    super::atoi(s).max(0) as u32
}

/// Parses one admin line (without its line end).
pub fn parse(line: &[u8]) -> Result<Command<'_>, TooManyTokens> {
    let t = tokens(line)?;
    let word = t[0].to_ascii_lowercase();
    let eq = |i: usize, w: &str| {
        t.get(i)
            .is_some_and(|x| x.eq_ignore_ascii_case(w.as_bytes()))
    };
    Ok(match word.as_slice() {
        b"workers" => Command::Workers,
        b"status" => Command::Status,
        b"prioritystatus" => Command::PriorityStatus,
        b"show" if t.len() == 1 => Command::Reply(unknown(t[0])),
        b"show" if t.len() == 2 && eq(1, "jobs") => Command::ShowJobs,
        b"show" if t.len() == 3 && eq(1, "unique") && eq(2, "jobs") => Command::ShowUniqueJobs,
        b"show" => Command::Reply("ERR UNKNOWN_SHOW_ARGUMENTS\r\n".into()),
        b"cancel" if t.len() < 3 => Command::Reply(unknown(t[0])),
        b"cancel" if t.len() == 3 && eq(1, "job") => Command::CancelJob(t[2]),
        b"cancel" => Command::Reply("ERR UNKNOWN_ERROR\r\n".into()),
        b"create" if t.len() == 3 && eq(1, "function") => Command::CreateFunction(t[2]),
        b"create" => Command::Reply(incomplete("create")),
        b"drop" if t.len() == 3 && eq(1, "function") => Command::DropFunction(t[2]),
        b"drop" => Command::Reply(incomplete("drop")),
        b"maxqueue" if t.len() < 2 => Command::Reply(incomplete("maxqueue")),
        b"maxqueue" => {
            let v: smallvec::SmallVec<[u32; 3]> = t[2..].iter().map(|s| queue_limit(s)).collect();
            let limits = match v.len() {
                0 => [0, 0, 0],
                1 => [v[0]; 3],
                2 => [v[0], v[1], 0],
                _ => [v[0], v[1], v[2]],
            };
            Command::MaxQueue(t[1], limits)
        }
        b"getpid" => Command::GetPid,
        b"verbose" => Command::Verbose,
        b"version" => Command::Version,
        b"queue" => Command::Queue,
        b"shutdown" => Command::Shutdown {
            graceful: eq(1, "graceful"),
        },
        _ => Command::Reply(unknown(t[0])),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_fixed_replies() {
        assert_eq!(parse(b"STATUS").unwrap(), Command::Status);
        assert_eq!(parse(b"workers extra args").unwrap(), Command::Workers);
        assert_eq!(parse(b"show unique jobs").unwrap(), Command::ShowUniqueJobs);
        assert_eq!(
            parse(b"cancel job H:x:1").unwrap(),
            Command::CancelJob(b"H:x:1")
        );
        assert_eq!(
            parse(b" status").unwrap(),
            Command::Reply("ERR UNKNOWN_COMMAND Unknown+server+command\r\n".into())
        );
        assert_eq!(
            parse(b"").unwrap(),
            Command::Reply("ERR UNKNOWN_COMMAND Unknown+server+command\r\n".into())
        );
        assert_eq!(
            parse(b"cancel job").unwrap(),
            Command::Reply("ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n".into())
        );
        assert_eq!(
            parse(b"cancel x y").unwrap(),
            Command::Reply("ERR UNKNOWN_ERROR\r\n".into())
        );
        assert_eq!(
            parse(b"show x").unwrap(),
            Command::Reply("ERR UNKNOWN_SHOW_ARGUMENTS\r\n".into())
        );
        assert_eq!(
            parse(b"maxqueue f 5").unwrap(),
            Command::MaxQueue(b"f", [5, 5, 5])
        );
        assert_eq!(
            parse(b"maxqueue f 1 2").unwrap(),
            Command::MaxQueue(b"f", [1, 2, 0])
        );
        assert_eq!(
            parse(b"maxqueue f -1 x 3").unwrap(),
            Command::MaxQueue(b"f", [0, 0, 3])
        );
        assert_eq!(parse(b"a b c d e f"), Err(TooManyTokens));
        assert_eq!(
            parse(b"shutdown graceful").unwrap(),
            Command::Shutdown { graceful: true }
        );
    }
}
