//! The Gearman wire format: binary packets and text admin lines, decoded in place and encoded
//! onto the end of a caller's `Vec<u8>`. The server builds each answer as its own `Vec` (it may
//! travel to another shard as a message) and copies it into the connection's output buffer.
//! No I/O here: the server and the client library both call it.
//!
//! A decoded [`Packet`] borrows its arguments from the caller's buffer; nothing is copied until a
//! handler decides to keep something (a job's payload, say).

pub mod admin;
pub mod http;
mod packet;

pub use packet::PacketType;

/// Magic of a request (client or worker to server).
pub const REQ: [u8; 4] = *b"\0REQ";
/// Magic of a response (server to client or worker).
pub const RES: [u8; 4] = *b"\0RES";
/// Size of a binary packet header: magic, type, body size.
pub const HEADER_LEN: usize = 12;
/// The most arguments any packet type has (SUBMIT_JOB_SCHED: seven, plus its data).
pub const MAX_ARGS: usize = 8;

/// Which way a packet was addressed, by its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magic {
    /// `\0REQ`
    Request,
    /// `\0RES`
    Response,
}

/// A binary packet whose arguments are slices of the buffer it was decoded from.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    /// The magic it carried.
    pub magic: Magic,
    /// Its type.
    pub ty: PacketType,
    /// The whole body.
    pub body: &'a [u8],
    args: [&'a [u8]; MAX_ARGS],
    argc: usize,
}

impl<'a> Packet<'a> {
    /// Argument `i` (0-based), or an empty slice past the end.
    pub fn arg(&self, i: usize) -> &'a [u8] {
        if i < self.argc { self.args[i] } else { &[] }
    }

    /// All arguments, the tail (data) last.
    pub fn args(&self) -> &[&'a [u8]] {
        &self.args[..self.argc]
    }
}

/// One unit of input: a binary packet or a text admin line.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A binary packet.
    Packet(Packet<'a>),
    /// A text line without its line end (`\n` or `\r\n`).
    Line(&'a [u8]),
}

/// What [`decode`] found at the start of a buffer.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A whole frame, and how many bytes it used.
    Frame(Frame<'a>, usize),
    /// Not enough bytes yet; `need` is the total length of the frame when the header told it,
    /// so a reader can make room for it at once.
    Incomplete {
        /// The frame's full length, if known.
        need: Option<usize>,
    },
}

/// Input that can never become a valid frame. Every variant closes the connection after an
/// ERROR packet or an `ERR` line (PROTOCOL.md "Our decisions" 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The first four bytes were neither `\0REQ` nor `\0RES`.
    BadMagic,
    /// Type 0, or a number past the table.
    UnknownType(u32),
    /// The header announced a body over the configured limit.
    TooLarge {
        /// The announced body size.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// The body held fewer NUL separators than the packet type needs.
    MissingArguments(PacketType),
    /// A text line ran past the limit without a line end.
    LineTooLong(usize),
}

impl DecodeError {
    /// The ERROR packet code and text sent before closing.
    pub fn error_packet(&self) -> (&'static str, String) {
        match self {
            DecodeError::BadMagic => ("INVALID_MAGIC", "Request magic expected".into()),
            DecodeError::UnknownType(n) => ("INVALID_COMMAND", format!("Unknown packet type {n}")),
            DecodeError::TooLarge { size, limit } => (
                "ARGUMENT_TOO_LARGE",
                format!("Packet body of {size} bytes is over the limit of {limit} bytes"),
            ),
            DecodeError::MissingArguments(ty) => (
                "INVALID_PACKET",
                format!("{} needs {} arguments separated by NUL", ty.name(), {
                    let (n, tail) = ty.layout();
                    n + tail as usize
                }),
            ),
            DecodeError::LineTooLong(limit) => (
                "INVALID_ARGUMENTS",
                format!("Text line longer than {limit} bytes"),
            ),
        }
    }
}

/// Decodes the frame at the start of `buf`.
///
/// `max_body` bounds a binary body and `max_line` a text line; both are checked before the
/// bytes are waited for, so a peer cannot make the server buffer more than the limits.
pub fn decode(buf: &[u8], max_body: usize, max_line: usize) -> Result<Decoded<'_>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(Decoded::Incomplete { need: None });
    };
    if first != 0 {
        return decode_line(buf, max_line);
    }
    if buf.len() < HEADER_LEN {
        // A wrong magic is known as soon as its bytes are here.
        let seen = &buf[..buf.len().min(4)];
        if seen != &REQ[..seen.len()] && seen != &RES[..seen.len()] {
            return Err(DecodeError::BadMagic);
        }
        return Ok(Decoded::Incomplete { need: None });
    }
    let magic = match &buf[..4] {
        m if m == REQ => Magic::Request,
        m if m == RES => Magic::Response,
        _ => return Err(DecodeError::BadMagic),
    };
    let number = u32::from_be_bytes(buf[4..8].try_into().unwrap());
    let ty = PacketType::from_u32(number).ok_or(DecodeError::UnknownType(number))?;
    let size = u32::from_be_bytes(buf[8..12].try_into().unwrap()) as usize;
    if size > max_body {
        return Err(DecodeError::TooLarge {
            size: size as u64,
            limit: max_body,
        });
    }
    let total = HEADER_LEN + size;
    if buf.len() < total {
        return Ok(Decoded::Incomplete { need: Some(total) });
    }
    let body = &buf[HEADER_LEN..total];
    let packet = split_args(magic, ty, body)?;
    Ok(Decoded::Frame(Frame::Packet(packet), total))
}

/// Splits a body into its arguments, bounded by the body (never by what follows it).
pub fn split_args(magic: Magic, ty: PacketType, body: &[u8]) -> Result<Packet<'_>, DecodeError> {
    let (leading, tail) = ty.layout();
    let mut args: [&[u8]; MAX_ARGS] = [&[]; MAX_ARGS];
    let mut rest = body;
    for slot in args.iter_mut().take(leading) {
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::MissingArguments(ty));
        };
        *slot = &rest[..nul];
        rest = &rest[nul + 1..];
    }
    let mut argc = leading;
    if tail {
        args[argc] = rest;
        argc += 1;
    }
    Ok(Packet {
        magic,
        ty,
        body,
        args,
        argc,
    })
}

fn decode_line(buf: &[u8], max_line: usize) -> Result<Decoded<'_>, DecodeError> {
    let window = &buf[..buf.len().min(max_line + 1)];
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let mut line = &buf[..nl];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            Ok(Decoded::Frame(Frame::Line(line), nl + 1))
        }
        None if buf.len() > max_line => Err(DecodeError::LineTooLong(max_line)),
        None => Ok(Decoded::Incomplete { need: None }),
    }
}

/// Appends a response packet (`\0RES`) with the given arguments, joined by NUL.
pub fn encode(out: &mut Vec<u8>, ty: PacketType, args: &[&[u8]]) {
    encode_with_magic(out, RES, ty, args)
}

/// Appends a request packet (`\0REQ`), for clients and workers.
pub fn encode_request(out: &mut Vec<u8>, ty: PacketType, args: &[&[u8]]) {
    encode_with_magic(out, REQ, ty, args)
}

fn encode_with_magic(out: &mut Vec<u8>, magic: [u8; 4], ty: PacketType, args: &[&[u8]]) {
    let size: usize = args.iter().map(|a| a.len()).sum::<usize>() + args.len().saturating_sub(1);
    out.reserve(HEADER_LEN + size);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&ty.number().to_be_bytes());
    out.extend_from_slice(&(size as u32).to_be_bytes());
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(a);
    }
}

/// Appends an ERROR packet: `CODE\0text`.
pub fn encode_error(out: &mut Vec<u8>, code: &str, text: &str) {
    encode(out, PacketType::Error, &[code.as_bytes(), text.as_bytes()]);
}

/// Formats an unsigned number into a small stack buffer, for packet arguments.
pub fn num(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// C's `strtol(s, NULL, 10)` with a 64-bit `long`, as glibc reads gearmand's numeric
/// arguments: leading white space (`isspace`), an optional sign, decimal digits up to the first
/// other byte; no digits reads 0. A value past the `long` range is `Err` with the value strtol
/// saturates to (`LONG_MAX` or `LONG_MIN`, with `errno = ERANGE`).
pub fn strtol(s: &[u8]) -> Result<i64, i64> {
    let start = s
        .iter()
        .position(|b| !b" \t\n\x0b\x0c\r".contains(b))
        .unwrap_or(s.len());
    let s = &s[start..];
    let (negative, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let saturated = if negative { i64::MIN } else { i64::MAX };
    let mut v: i64 = 0;
    for &b in digits.iter().take_while(|b| b.is_ascii_digit()) {
        let d = (b - b'0') as i64;
        let next = v.checked_mul(10).and_then(|v| {
            if negative {
                v.checked_sub(d)
            } else {
                v.checked_add(d)
            }
        });
        v = next.ok_or(saturated)?;
    }
    Ok(v)
}

/// C's `atoi` as glibc computes it: `(int) strtol(s, NULL, 10)`, so a value past the `long`
/// range saturates first and the cast then keeps its low 32 bits (gearmand stores WORK_STATUS
/// numbers and `maxqueue` limits this way: `4294967297` reads 1, a 20-digit number -1).
pub fn atoi(s: &[u8]) -> i32 {
    strtol(s).unwrap_or_else(|saturated| saturated) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_glibc_reads_them() {
        assert_eq!(strtol(b"123abc"), Ok(123));
        assert_eq!(strtol(b"abc"), Ok(0));
        assert_eq!(strtol(b""), Ok(0));
        assert_eq!(strtol(b" -5"), Ok(-5));
        assert_eq!(strtol(b"\x0b\x0c\r\t\n +7x"), Ok(7));
        assert_eq!(strtol(b"0x10"), Ok(0));
        assert_eq!(strtol(b"9223372036854775807"), Ok(i64::MAX));
        assert_eq!(strtol(b"9223372036854775808"), Err(i64::MAX));
        assert_eq!(strtol(b"-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(strtol(b"-9223372036854775809"), Err(i64::MIN));
        // gearmand 1.1.20's GET_STATUS after WORK_STATUS with these (observed).
        assert_eq!(atoi(b"99999999999999999999") as u32, 4294967295);
        assert_eq!(atoi(b"4294967297") as u32, 1);
        assert_eq!(atoi(b"-1") as u32, 4294967295);
        assert_eq!(atoi(b"-99999999999999999999") as u32, 0);
        assert_eq!(atoi(b"99999999999"), 1215752191);
    }

    fn req(ty: u32, body: &[u8]) -> Vec<u8> {
        let mut v = REQ.to_vec();
        v.extend_from_slice(&ty.to_be_bytes());
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn submit_splits_function_unique_and_data() {
        let buf = req(7, b"fn\0u1\0pay\0load");
        let Decoded::Frame(Frame::Packet(p), used) = decode(&buf, 1 << 20, 8192).unwrap() else {
            panic!()
        };
        assert_eq!(used, buf.len());
        assert_eq!(p.ty, PacketType::SubmitJob);
        assert_eq!(p.args(), &[&b"fn"[..], b"u1", b"pay\0load"]);
    }

    #[test]
    fn too_few_nuls_is_an_error_not_a_desync() {
        let mut buf = req(7, b"fn");
        buf.extend(req(16, b"echo"));
        assert_eq!(
            decode(&buf, 1 << 20, 8192).unwrap_err(),
            DecodeError::MissingArguments(PacketType::SubmitJob)
        );
    }

    #[test]
    fn incomplete_until_the_whole_body_is_here() {
        let buf = req(16, b"hello");
        for cut in 0..buf.len() {
            match decode(&buf[..cut], 1 << 20, 8192).unwrap() {
                Decoded::Incomplete { need } => {
                    if cut >= HEADER_LEN {
                        assert_eq!(need, Some(buf.len()))
                    }
                }
                other => panic!("{other:?} at {cut}"),
            }
        }
    }

    #[test]
    fn limits_are_checked_from_the_header() {
        let mut buf = req(16, b"");
        buf[8..12].copy_from_slice(&(1u32 << 30).to_be_bytes());
        assert!(matches!(
            decode(&buf, 1 << 20, 8192),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(decode(b"\0XYZ", 10, 10).unwrap_err(), DecodeError::BadMagic);
        assert_eq!(
            decode(&req(0, b""), 10, 10).unwrap_err(),
            DecodeError::UnknownType(0)
        );
        assert_eq!(
            decode(&req(43, b""), 10, 10).unwrap_err(),
            DecodeError::UnknownType(43)
        );
    }

    #[test]
    fn text_lines_end_in_lf_or_crlf() {
        let Decoded::Frame(Frame::Line(l), n) = decode(b"status\r\nx", 1, 100).unwrap() else {
            panic!()
        };
        assert_eq!((l, n), (&b"status"[..], 8));
        assert!(matches!(
            decode(b"status", 1, 100).unwrap(),
            Decoded::Incomplete { .. }
        ));
        assert_eq!(
            decode(b"aaaaaa", 1, 4).unwrap_err(),
            DecodeError::LineTooLong(4)
        );
    }

    #[test]
    fn encode_joins_with_nul_and_no_trailing_nul() {
        let mut out = Vec::new();
        encode(&mut out, PacketType::JobAssign, &[b"H:x:1", b"f", b"data"]);
        assert_eq!(&out[..4], b"\0RES");
        assert_eq!(u32::from_be_bytes(out[4..8].try_into().unwrap()), 11);
        assert_eq!(u32::from_be_bytes(out[8..12].try_into().unwrap()), 12);
        assert_eq!(&out[12..], b"H:x:1\0f\0data");
        let mut b = [0; 20];
        assert_eq!(num(0, &mut b), b"0");
        assert_eq!(num(18446744073709551615, &mut b), b"18446744073709551615");
    }
}
