//! gearmand's HTTP protocol module (`-r http`): one request per connection, parsed without
//! I/O, and the replies gearmand 1.1.20 writes.
//!
//! A request is `METHOD /function HTTP/1.x`, headers, and for POST and PUT a body of
//! `Content-Length` bytes, which is the job's payload. The URI after its leading slashes is
//! the function name as is (no decoding, a query string included), as gearmand takes it.
//! Headers read (names case-insensitive, values trimmed):
//!
//! - `X-Gearman-Unique: <id>`: the unique id (default `-`: coalesce on the payload);
//! - `X-Gearman-Background: true`: a background job, answered with its handle at once;
//! - `X-Gearman-Priority: high` or `low`;
//! - `Content-Length` (POST and PUT only; GET, HEAD and TRACE carry no body).
//!
//! The head (request line and headers) is at most [`MAX_HEAD`] bytes, the body at most the
//! server's `--max-packet-size`. Lines end in CRLF or a bare LF, as gearmand reads them.

/// Longest request head (request line, headers and the blank line) accepted; a longer one
/// is answered 431.
pub const MAX_HEAD: usize = 8 * 1024;

/// The methods gearmand's module knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET: a job with an empty payload.
    Get,
    /// PUT: as POST.
    Put,
    /// POST: a job whose payload is the body.
    Post,
    /// HEAD: a job, answered with the headers only.
    Head,
    /// TRACE: the request head is sent back.
    Trace,
}

/// The priority a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// `X-Gearman-Priority: high`
    High,
    /// The default.
    Normal,
    /// `X-Gearman-Priority: low`
    Low,
}

/// A complete request, borrowing from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Its method.
    pub method: Method,
    /// The function: the URI without its leading slashes (may be empty).
    pub function: &'a [u8],
    /// The unique id, `-` unless given.
    pub unique: &'a [u8],
    /// `X-Gearman-Background: true`.
    pub background: bool,
    /// `X-Gearman-Priority`.
    pub priority: Priority,
    /// The body (the job's payload).
    pub body: &'a [u8],
    /// The whole head, for TRACE.
    pub head: &'a [u8],
}

/// What the input holds so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// More is needed: `need` is the whole request's length once the head is known.
    Incomplete {
        /// Bytes the whole request takes, when known.
        need: Option<usize>,
    },
    /// A request, and the bytes it took.
    Request(Request<'a>, usize),
}

/// A request that cannot be served: answered with this status, then the connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400: a malformed request line, header or Content-Length.
    BadRequest,
    /// 404: no function in the URI (gearmand's own answer).
    NotFound,
    /// 405: a method other than GET, PUT, POST, HEAD, TRACE.
    MethodNotAllowed,
    /// 411: a body without a Content-Length (chunked transfer coding).
    LengthRequired,
    /// 413: a body larger than `--max-packet-size`.
    TooLarge,
    /// 431: a head larger than [`MAX_HEAD`].
    HeadTooLarge,
    /// 505: a version other than HTTP/1.0 and HTTP/1.1.
    VersionNotSupported,
}

impl Refusal {
    /// The status code and reason phrase (gearmand's for 404).
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::BadRequest => (400, "Bad Request"),
            Refusal::NotFound => (404, "NOT_FOUND"),
            Refusal::MethodNotAllowed => (405, "Method Not Allowed"),
            Refusal::LengthRequired => (411, "Length Required"),
            Refusal::TooLarge => (413, "Content Too Large"),
            Refusal::HeadTooLarge => (431, "Request Header Fields Too Large"),
            Refusal::VersionNotSupported => (505, "HTTP Version Not Supported"),
        }
    }
}

/// Parses the request at the start of `buf`; a body longer than `max_body` is refused.
pub fn parse(buf: &[u8], max_body: usize) -> Result<Parsed<'_>, Refusal> {
    // Blank lines before a request line are skipped (RFC 9112 §2.2; gearmand waits past them).
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let Some(head_len) = head_end(&buf[start..]) else {
        if buf.len() - start > MAX_HEAD {
            return Err(Refusal::HeadTooLarge);
        }
        return Ok(Parsed::Incomplete { need: None });
    };
    if head_len > MAX_HEAD {
        return Err(Refusal::HeadTooLarge);
    }
    let head = &buf[start..start + head_len];
    let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
    let request_line = lines.next().unwrap_or_default();
    let (method, function) = request_line_parts(request_line)?;
    let mut unique: &[u8] = b"-";
    let mut background = false;
    let mut priority = Priority::Normal;
    let mut length: Option<usize> = None;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // Obsolete line folding (RFC 9112 §5.2).
            return Err(Refusal::BadRequest);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Refusal::BadRequest)?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(Refusal::BadRequest);
        }
        let value = trim(&line[colon + 1..]);
        if value.iter().any(|&b| b < b' ' && b != b'\t' || b == 0x7f) {
            return Err(Refusal::BadRequest);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(value).ok_or(Refusal::BadRequest)?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal::BadRequest);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if matches!(method, Method::Post | Method::Put) {
                return Err(Refusal::LengthRequired);
            }
        } else if name.eq_ignore_ascii_case(b"x-gearman-unique") {
            if !value.is_empty() {
                unique = value;
            }
        } else if name.eq_ignore_ascii_case(b"x-gearman-background") {
            background |= value.eq_ignore_ascii_case(b"true");
        } else if name.eq_ignore_ascii_case(b"x-gearman-priority") {
            if value.eq_ignore_ascii_case(b"high") {
                priority = Priority::High;
            } else if value.eq_ignore_ascii_case(b"low") {
                priority = Priority::Low;
            }
        }
    }
    // As gearmand: only POST and PUT have a body.
    let body_len = match method {
        Method::Post | Method::Put => length.unwrap_or(0),
        _ => 0,
    };
    if body_len > max_body {
        return Err(Refusal::TooLarge);
    }
    let total = start + head_len + body_len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete { need: Some(total) });
    }
    if function.is_empty() && matches!(method, Method::Get | Method::Put | Method::Post) {
        return Err(Refusal::NotFound);
    }
    Ok(Parsed::Request(
        Request {
            method,
            function,
            unique,
            background,
            priority,
            body: &buf[start + head_len..total],
            head,
        },
        total,
    ))
}

/// The length of the head (through its blank line), if it is all there.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let nl = from + i;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        if rest.is_empty() || rest == b"\r" {
            return None;
        }
        from = nl + 1;
    }
    None
}

/// Method and function from `METHOD SP+ /*function SP+ HTTP/1.x`.
fn request_line_parts(line: &[u8]) -> Result<(Method, &[u8]), Refusal> {
    if line.iter().any(|&b| b < b' ' || b == 0x7f) {
        return Err(Refusal::BadRequest);
    }
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadRequest);
    };
    let method = match method {
        b"GET" => Method::Get,
        b"PUT" => Method::Put,
        b"POST" => Method::Post,
        b"HEAD" => Method::Head,
        b"TRACE" => Method::Trace,
        m if m.iter().all(|&b| is_tchar(b)) => return Err(Refusal::MethodNotAllowed),
        _ => return Err(Refusal::BadRequest),
    };
    match version {
        b"HTTP/1.0" | b"HTTP/1.1" => {}
        v if v.starts_with(b"HTTP/") => return Err(Refusal::VersionNotSupported),
        _ => return Err(Refusal::BadRequest),
    }
    let start = uri.iter().position(|&b| b != b'/').unwrap_or(uri.len());
    Ok((method, &uri[start..]))
}

/// A Content-Length: digits only, at most what fits comfortably (a larger one is surely
/// refused as too large, so it saturates).
fn parse_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if value.len() > 19 {
        return Some(usize::MAX);
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// RFC 9110's token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(s, |e| e + 1);
    &v[s..e]
}

/// A refusal's reply: gearmand's error reply (status, Server, `Content-Length: 0`); a 405
/// also names the methods allowed.
pub fn refusal(out: &mut Vec<u8>, r: Refusal, version: &str) {
    let (code, reason) = r.status();
    push(out, &format!("HTTP/1.0 {code} {reason}\r\n"));
    if r == Refusal::MethodNotAllowed {
        out.extend_from_slice(b"Allow: GET, HEAD, POST, PUT, TRACE\r\n");
    }
    push(
        out,
        &format!("Server: Gearman/{version}\r\nContent-Length: 0\r\n\r\n"),
    );
}

/// The reply naming a job: `X-Gearman-Job-Handle`, `X-Gearman-Command` (the packet that ended
/// the wait: JOB_CREATED, WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION), `Content-Length` and the
/// body, in gearmand's order. A reply to HEAD has no `X-Gearman-Command` and no body.
pub fn job_reply(
    out: &mut Vec<u8>,
    handle: &[u8],
    command: &str,
    body: &[u8],
    head: bool,
    version: &str,
) {
    out.extend_from_slice(b"HTTP/1.0 200 OK\r\nX-Gearman-Job-Handle: ");
    out.extend_from_slice(handle);
    out.extend_from_slice(b"\r\n");
    if !head {
        push(out, &format!("X-Gearman-Command: {command}\r\n"));
    }
    push(
        out,
        &format!(
            "Content-Length: {}\r\nServer: Gearman/{version}\r\n\r\n",
            body.len()
        ),
    );
    if !head {
        out.extend_from_slice(body);
    }
}

/// The reply to a submission the server refused (an ERROR packet): `status` (gearmand
/// answers 200), `X-Gearman-Command: ERROR` as gearmand, and the error's code and text as
/// the body (gearmand puts the code in `X-Gearman-Job-Handle`).
pub fn error_reply(
    out: &mut Vec<u8>,
    status: (u16, &str),
    code: &[u8],
    text: &[u8],
    version: &str,
) {
    let len = code.len() + 1 + text.len();
    let (status, reason) = status;
    push(
        out,
        &format!(
            "HTTP/1.0 {status} {reason}\r\nX-Gearman-Command: ERROR\r\n\
             Content-Length: {len}\r\nServer: Gearman/{version}\r\n\r\n"
        ),
    );
    out.extend_from_slice(code);
    out.push(b' ');
    out.extend_from_slice(text);
}

/// The reply to TRACE: the request head as a `message/http` body.
pub fn trace_reply(out: &mut Vec<u8>, head: &[u8], version: &str) {
    push(
        out,
        &format!(
            "HTTP/1.0 200 OK\r\nServer: Gearman/{version}\r\nConnection: close\r\n\
             Content-Type: message/http\r\nContent-Length: {}\r\n\r\n",
            head.len()
        ),
    );
    out.extend_from_slice(head);
}

/// The reply to `HEAD /`: no job.
pub fn empty_reply(out: &mut Vec<u8>, version: &str) {
    push(
        out,
        &format!("HTTP/1.0 200 OK\r\nContent-Length: 0\r\nServer: Gearman/{version}\r\n\r\n"),
    );
}

fn push(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(buf: &[u8]) -> Request<'_> {
        match parse(buf, 1 << 20) {
            Ok(Parsed::Request(r, used)) => {
                assert_eq!(used, buf.len());
                r
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn post_with_gearman_headers() {
        let r = req(
            b"POST /reverse HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\n\
                      X-Gearman-Unique: u1\r\nx-gearman-background: TRUE\r\n\
                      X-Gearman-Priority: high\r\n\r\nhello",
        );
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.function, b"reverse");
        assert_eq!(r.unique, b"u1");
        assert!(r.background);
        assert_eq!(r.priority, Priority::High);
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn defaults_and_bare_lf() {
        let r = req(b"\r\nGET ///f?x=1 HTTP/1.0\nX-Gearman-Priority: low\nX-Gearman-Unique:\n\n");
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.function, b"f?x=1");
        assert_eq!(r.unique, b"-");
        assert!(!r.background);
        assert_eq!(r.priority, Priority::Low);
        assert_eq!(r.body, b"");
        // GET has no body, whatever Content-Length says (as gearmand).
        let buf = b"GET /f HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc";
        assert!(matches!(parse(buf, 100), Ok(Parsed::Request(r, 38)) if r.body.is_empty()));
    }

    #[test]
    fn incomplete_until_head_and_body_are_in() {
        let full = b"POST /f HTTP/1.0\r\nContent-Length: 4\r\n\r\nabcd";
        for n in 0..full.len() - 4 {
            assert_eq!(
                parse(&full[..n], 100),
                Ok(Parsed::Incomplete { need: None }),
                "{n}"
            );
        }
        for n in full.len() - 4..full.len() {
            assert_eq!(
                parse(&full[..n], 100),
                Ok(Parsed::Incomplete {
                    need: Some(full.len())
                })
            );
        }
        // Bytes after the request are left alone.
        let mut two = full.to_vec();
        two.extend_from_slice(b"POST /g");
        assert!(matches!(parse(&two, 100), Ok(Parsed::Request(_, n)) if n == full.len()));
    }

    #[test]
    fn refusals() {
        let bad = |b: &[u8]| parse(b, 10).unwrap_err();
        assert_eq!(
            bad(b"DELETE /f HTTP/1.1\r\n\r\n"),
            Refusal::MethodNotAllowed
        );
        assert_eq!(bad(b"post /f HTTP/1.1\r\n\r\n"), Refusal::MethodNotAllowed);
        assert_eq!(bad(b"GARBAGE\r\n\r\n"), Refusal::BadRequest);
        assert_eq!(bad(b"POST /f\r\n\r\n"), Refusal::BadRequest);
        assert_eq!(bad(b"POST /f HTTP/1.1 x\r\n\r\n"), Refusal::BadRequest);
        assert_eq!(bad(b"P(ST /f HTTP/1.1\r\n\r\n"), Refusal::BadRequest);
        assert_eq!(
            bad(b"POST /f HTTP/2.0\r\n\r\n"),
            Refusal::VersionNotSupported
        );
        assert_eq!(bad(b"POST /f FTP/1.0\r\n\r\n"), Refusal::BadRequest);
        assert_eq!(bad(b"POST / HTTP/1.0\r\n\r\n"), Refusal::NotFound);
        assert_eq!(
            bad(b"POST /f HTTP/1.0\r\nNoColon\r\n\r\n"),
            Refusal::BadRequest
        );
        assert_eq!(
            bad(b"POST /f HTTP/1.0\r\n : x\r\n\r\n"),
            Refusal::BadRequest
        );
        let cl = |v: &str| format!("POST /f HTTP/1.0\r\nContent-Length: {v}\r\n\r\n");
        assert_eq!(bad(cl("-1").as_bytes()), Refusal::BadRequest);
        assert_eq!(bad(cl("abc").as_bytes()), Refusal::BadRequest);
        assert_eq!(bad(cl("").as_bytes()), Refusal::BadRequest);
        assert_eq!(bad(cl("11").as_bytes()), Refusal::TooLarge);
        assert_eq!(
            bad(cl("99999999999999999999999999").as_bytes()),
            Refusal::TooLarge
        );
        assert_eq!(
            bad(b"POST /f HTTP/1.0\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Refusal::BadRequest
        );
        assert_eq!(
            bad(b"POST /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Refusal::LengthRequired
        );
        // Heads are bounded, complete or not.
        let mut big = b"POST /f HTTP/1.0\r\nX-A: ".to_vec();
        big.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse(&big, 10), Err(Refusal::HeadTooLarge));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&big, 10), Err(Refusal::HeadTooLarge));
        big.truncate(MAX_HEAD - 4);
        assert_eq!(parse(&big, 10), Ok(Parsed::Incomplete { need: None }));
        big.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse(&big, 10), Ok(Parsed::Request(..))));
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        job_reply(
            &mut out,
            b"H:x:1",
            "WORK_COMPLETE",
            b"olleh",
            false,
            "1.1.20",
        );
        assert_eq!(
            out,
            b"HTTP/1.0 200 OK\r\nX-Gearman-Job-Handle: H:x:1\r\nX-Gearman-Command: \
              WORK_COMPLETE\r\nContent-Length: 5\r\nServer: Gearman/1.1.20\r\n\r\nolleh"
        );
        out.clear();
        job_reply(
            &mut out,
            b"H:x:1",
            "WORK_COMPLETE",
            b"olleh",
            true,
            "1.1.20",
        );
        assert_eq!(
            out,
            b"HTTP/1.0 200 OK\r\nX-Gearman-Job-Handle: H:x:1\r\nContent-Length: 5\r\n\
              Server: Gearman/1.1.20\r\n\r\n"
        );
        out.clear();
        refusal(&mut out, Refusal::NotFound, "1.1.20");
        assert_eq!(
            out,
            b"HTTP/1.0 404 NOT_FOUND\r\nServer: Gearman/1.1.20\r\nContent-Length: 0\r\n\r\n"
        );
    }
}
