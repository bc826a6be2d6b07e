//! The packet decoder (`protocol::decode`, `split_args`, the packet table) on random bytes with
//! random limits. Checks, besides "no panic":
//! - a frame never uses more bytes than it was given, nor more than the limits allow;
//! - a packet with a data tail re-encodes to exactly the bytes it was decoded from;
//! - `Incomplete { need }` is honest: every shorter prefix is incomplete too, and feeding the
//!   missing bytes completes it at exactly `need`;
//! - an error is final: more bytes never turn it into something else;
//! - a stream fed in random chunks (as the server reads it) yields the same frames as the
//!   whole stream decoded at once.
#![no_main]

use arbitrary::Arbitrary;
use gearshift::protocol::{self, DecodeError, Decoded, Frame, HEADER_LEN, Magic, PacketType};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Limits as the server takes them from its flags (kept small so they bite).
    max_body: u16,
    max_line: u16,
    /// Where the stream is cut into reads.
    cuts: Vec<u16>,
    /// Filler for the bytes an incomplete frame still needs.
    filler: u8,
    data: &'a [u8],
}

/// A frame with its bytes copied out, so frames from different buffers can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Packet(Magic, PacketType, Vec<u8>),
    Line(Vec<u8>),
}

fn own(frame: &Frame<'_>) -> Owned {
    match frame {
        Frame::Packet(p) => Owned::Packet(p.magic, p.ty, p.body.to_vec()),
        Frame::Line(l) => Owned::Line(l.to_vec()),
    }
}

/// Everything a single `decode` call must satisfy on its own.
fn check_one(buf: &[u8], max_body: usize, max_line: usize, filler: u8) {
    match protocol::decode(buf, max_body, max_line) {
        Ok(Decoded::Frame(frame, used)) => {
            assert!(
                used > 0 && used <= buf.len(),
                "used {used} of {}",
                buf.len()
            );
            match frame {
                Frame::Packet(p) => {
                    assert_eq!(used, HEADER_LEN + p.body.len());
                    assert!(p.body.len() <= max_body);
                    assert_eq!(p.body, &buf[HEADER_LEN..used]);
                    let (leading, tail) = p.ty.layout();
                    assert_eq!(p.args().len(), leading + tail as usize);
                    if tail {
                        // The arguments joined by NUL are the body: re-encoding is lossless.
                        let mut again = Vec::new();
                        match p.magic {
                            Magic::Request => protocol::encode_request(&mut again, p.ty, p.args()),
                            Magic::Response => protocol::encode(&mut again, p.ty, p.args()),
                        }
                        assert_eq!(again, &buf[..used], "{:?} does not re-encode", p.ty);
                    }
                    for a in &p.args()[..leading] {
                        assert!(!a.contains(&0), "a leading argument holds a NUL");
                    }
                }
                Frame::Line(line) => {
                    assert_eq!(buf[used - 1], b'\n');
                    assert!(!line.contains(&b'\n'));
                    assert!(used - 1 <= max_line, "line of {} over {max_line}", used - 1);
                    let raw = &buf[..used - 1];
                    assert!(line == raw || (raw.ends_with(b"\r") && line == &raw[..raw.len() - 1]));
                }
            }
        }
        Ok(Decoded::Incomplete { need }) => {
            let mut more = buf.to_vec();
            match need {
                Some(need) => {
                    assert!(need > buf.len() && need <= HEADER_LEN + max_body);
                    // Every prefix up to `need` stays incomplete; `need` itself completes.
                    for len in [buf.len() + 1, (buf.len() + need) / 2, need - 1] {
                        if len < need {
                            more.resize(len, filler);
                            assert!(matches!(
                                protocol::decode(&more, max_body, max_line),
                                Ok(Decoded::Incomplete { need: Some(n) }) if n == need
                            ));
                        }
                    }
                    more.resize(need, filler);
                    match protocol::decode(&more, max_body, max_line) {
                        Ok(Decoded::Frame(_, used)) => assert_eq!(used, need),
                        Err(DecodeError::MissingArguments(_)) => {}
                        other => panic!("need {need} was not honest: {other:?}"),
                    }
                }
                None if buf.first().is_some_and(|&b| b != 0) => {
                    // A partial line: a line end completes it.
                    more.push(b'\n');
                    match protocol::decode(&more, max_body, max_line) {
                        Ok(Decoded::Frame(Frame::Line(_), used)) => assert_eq!(used, more.len()),
                        other => panic!("a line end did not complete a line: {other:?}"),
                    }
                }
                None => {
                    // A partial header (or nothing): whatever the rest of the header says,
                    // twelve bytes decide; with an ECHO type and size 0 they make a frame.
                    assert!(buf.len() < HEADER_LEN);
                    if more.len() < 4 {
                        more.extend_from_slice(&protocol::REQ[more.len()..]);
                    }
                    let typed = more.len() == 4;
                    if typed {
                        more.extend_from_slice(&PacketType::EchoReq.number().to_be_bytes());
                    }
                    more.resize(HEADER_LEN, 0);
                    match protocol::decode(&more, max_body, max_line) {
                        Ok(Decoded::Frame(Frame::Packet(_), used)) => assert_eq!(used, HEADER_LEN),
                        Ok(Decoded::Frame(Frame::Line(_), _)) | Err(DecodeError::BadMagic) => {
                            panic!("a partial header changed its kind")
                        }
                        Ok(Decoded::Incomplete { need: None }) => {
                            panic!("twelve bytes did not decide a header")
                        }
                        other => assert!(!typed, "an ECHO header did not complete: {other:?}"),
                    }
                }
            }
        }
        Err(e) => {
            // An error is decided by bytes already here; more bytes cannot undo it.
            let mut more = buf.to_vec();
            more.extend_from_slice(b"\n\0\0\0\0\0\0\0\0\0\0\0\0\n");
            more.resize(buf.len() + HEADER_LEN + max_body + 2, filler);
            let later = protocol::decode(&more, max_body, max_line).err();
            assert_eq!(later.as_ref(), Some(&e), "error {e:?} undone by more bytes");
            let (code, text) = e.error_packet();
            assert!(!code.is_empty() && !text.is_empty());
        }
    }
}

/// Decodes a whole stream frame by frame; stops at the first error or incomplete tail.
fn frames(buf: &[u8], max_body: usize, max_line: usize) -> (Vec<Owned>, Option<DecodeError>) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        match protocol::decode(&buf[at..], max_body, max_line) {
            Ok(Decoded::Frame(f, used)) => {
                out.push(own(&f));
                at += used;
            }
            Ok(Decoded::Incomplete { .. }) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// The same stream arriving in reads cut at `cuts`, buffered as a reader does.
fn frames_chunked(
    buf: &[u8],
    cuts: &[u16],
    max_body: usize,
    max_line: usize,
) -> (Vec<Owned>, Option<DecodeError>) {
    let mut points: Vec<usize> = cuts.iter().map(|&c| c as usize % (buf.len() + 1)).collect();
    points.push(buf.len());
    points.sort_unstable();
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut from = 0;
    for to in points {
        pending.extend_from_slice(&buf[from..to]);
        from = to;
        let mut at = 0;
        loop {
            match protocol::decode(&pending[at..], max_body, max_line) {
                Ok(Decoded::Frame(f, used)) => {
                    out.push(own(&f));
                    at += used;
                }
                Ok(Decoded::Incomplete { need }) => {
                    if let Some(need) = need {
                        assert!(need > pending.len() - at);
                    }
                    break;
                }
                Err(e) => return (out, Some(e)),
            }
        }
        pending.drain(..at);
    }
    (out, None)
}

fuzz_target!(|input: Input<'_>| {
    let max_body = input.max_body as usize;
    let max_line = input.max_line as usize % 1024;
    check_one(input.data, max_body, max_line, input.filler);
    // Every frame of a stream is checked, not only the first.
    let mut at = 0;
    while let Ok(Decoded::Frame(_, used)) = protocol::decode(&input.data[at..], max_body, max_line)
    {
        at += used;
        check_one(&input.data[at..], max_body, max_line, input.filler);
    }
    assert_eq!(
        frames(input.data, max_body, max_line),
        frames_chunked(input.data, &input.cuts, max_body, max_line)
    );
    // The packet table and the argument splitter on their own, with any type number.
    if let Some((&n, body)) = input.data.split_first()
        && let Some(ty) = PacketType::from_u32(n as u32 % 48)
    {
        assert_eq!(PacketType::from_u32(ty.number()), Some(ty));
        assert!(!ty.name().is_empty());
        if let Ok(p) = protocol::split_args(Magic::Request, ty, body) {
            let joined: usize =
                p.args().iter().map(|a| a.len()).sum::<usize>() + p.args().len().saturating_sub(1);
            assert!(joined <= body.len());
        }
    }
});
