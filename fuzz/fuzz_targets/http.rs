//! The HTTP module's request parser (`protocol::http`), fed any bytes and a body limit.
//! Checks, besides "no panic":
//! - a request never uses more bytes than it was given, its head is at most `MAX_HEAD` and its
//!   body at most the limit, and its parts are slices of the input;
//! - `Incomplete { need }` is honest: the input is shorter than `need`, and `need` is the
//!   length of the request the whole input parses to, if it completes;
//! - every shorter prefix of a complete request is incomplete (or, past `MAX_HEAD` without a
//!   head's end, refused as too large), so reading in pieces changes nothing;
//! - a refusal is final: more bytes never undo it.
#![no_main]

use gearshift::protocol::http::{self, MAX_HEAD, Parsed, Refusal};
use libfuzzer_sys::fuzz_target;

fn is_within(part: &[u8], buf: &[u8]) -> bool {
    let (start, end) = (buf.as_ptr() as usize, buf.as_ptr() as usize + buf.len());
    let p = part.as_ptr() as usize;
    part.is_empty() || (p >= start && p + part.len() <= end)
}

fuzz_target!(|input: (u16, &[u8])| {
    let (limit, buf) = input;
    let limit = limit as usize;
    match http::parse(buf, limit) {
        Ok(Parsed::Request(r, used)) => {
            assert!(used <= buf.len());
            assert!(r.head.len() <= MAX_HEAD && r.body.len() <= limit);
            for part in [r.function, r.unique, r.body, r.head] {
                assert!(is_within(part, &buf[..used]) || part == b"-");
            }
            assert_eq!(
                r.body.as_ptr() as usize + r.body.len(),
                buf.as_ptr() as usize + used
            );
            for cut in [used / 2, used.saturating_sub(1)] {
                if cut >= used {
                    continue;
                }
                match http::parse(&buf[..cut], limit) {
                    Ok(Parsed::Incomplete { need }) => {
                        assert!(need.is_none_or(|n| n == used), "{need:?} vs {used}")
                    }
                    Err(Refusal::HeadTooLarge) => unreachable!("a complete head fits"),
                    other => panic!("prefix {cut} of {used}: {other:?}"),
                }
            }
        }
        Ok(Parsed::Incomplete { need }) => {
            if let Some(n) = need {
                assert!(n > buf.len());
                // Completing the body completes the request, at exactly `need`.
                let mut whole = buf.to_vec();
                whole.resize(n, b'x');
                match http::parse(&whole, limit) {
                    Ok(Parsed::Request(_, used)) => assert_eq!(used, n),
                    Err(Refusal::NotFound) => {}
                    other => panic!("completed to {n}: {other:?}"),
                }
            } else {
                assert!(
                    buf.len()
                        <= MAX_HEAD
                            + buf
                                .iter()
                                .take_while(|&&b| b == b'\r' || b == b'\n')
                                .count()
                );
            }
        }
        Err(refusal) => {
            let mut more = buf.to_vec();
            more.extend_from_slice(b"\r\n\r\nmore bytes\r\n\r\n");
            assert_eq!(http::parse(&more, limit).err(), Some(refusal));
        }
    }
});
