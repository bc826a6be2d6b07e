//! The admin text line parser (`protocol::admin`), fed what the decoder hands it: any bytes
//! without a line end. Checks, besides "no panic":
//! - the token limit is exact: more than `MAX_TOKENS` space-separated tokens (a leading space
//!   counting as one empty token) is refused, anything else is parsed;
//! - command words are case-insensitive: upper- and lower-casing the line gives the same command;
//! - arguments are sub-slices of the line, never invented; fixed replies end in CRLF;
//! - `maxqueue` values follow gearmand's `atoi` (`(int) strtol`), negatives 0.
#![no_main]

use gearshift::protocol::admin::{self, Command, MAX_TOKENS};
use libfuzzer_sys::fuzz_target;

/// The tokens as PROTOCOL.md §2.1 defines them, written plainly.
fn reference_tokens(line: &[u8]) -> Vec<&[u8]> {
    let mut t: Vec<&[u8]> = Vec::new();
    if line.first() == Some(&b' ') {
        t.push(&[]);
    }
    t.extend(line.split(|&b| b == b' ').filter(|w| !w.is_empty()));
    if t.is_empty() {
        t.push(&[]);
    }
    t
}

/// A maxqueue value as gearmand reads it, written plainly: C's `atoi` is `(int) strtol`, which
/// skips white space, takes a sign and digits, and saturates at the 64-bit `long` range; the
/// cast keeps the low 32 bits, and gearmand makes a negative limit 0.
fn atoi(s: &[u8]) -> u32 {
    let s: Vec<u8> = s
        .iter()
        .copied()
        .skip_while(|b| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))
        .collect();
    let (negative, rest) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, &s[..]),
    };
    let digits: Vec<u8> = rest
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    let text = String::from_utf8(digits).unwrap();
    let magnitude: i128 = if text.is_empty() {
        0
    } else {
        text.parse::<i128>().unwrap_or(i128::MAX)
    };
    let value = if negative { -magnitude } else { magnitude };
    let long = value.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    let int = long as i32;
    int.max(0) as u32
}

fn is_within(part: &[u8], line: &[u8]) -> bool {
    let (start, end) = (line.as_ptr() as usize, line.as_ptr() as usize + line.len());
    let p = part.as_ptr() as usize;
    part.is_empty() || (p >= start && p + part.len() <= end)
}

fn same_kind(a: &Command<'_>, b: &Command<'_>) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fuzz_target!(|line: &[u8]| {
    // The decoder never hands over a line end.
    if line.contains(&b'\n') {
        return;
    }
    let expected = reference_tokens(line);
    let parsed = admin::parse(line);
    if expected.len() > MAX_TOKENS {
        assert_eq!(parsed, Err(admin::TooManyTokens));
        return;
    }
    assert_eq!(admin::tokens(line).unwrap().as_slice(), expected.as_slice());
    let command = parsed.expect("within the token limit a line always parses");
    match &command {
        Command::CancelJob(a) | Command::CreateFunction(a) | Command::DropFunction(a) => {
            assert!(is_within(a, line) && !a.is_empty() && !a.contains(&b' '));
            assert_eq!(expected.len(), 3);
        }
        Command::MaxQueue(f, limits) => {
            assert!(is_within(f, line));
            let values: Vec<u32> = expected[2..].iter().map(|s| atoi(s)).collect();
            let want = match values.len() {
                0 => [0; 3],
                1 => [values[0]; 3],
                2 => [values[0], values[1], 0],
                _ => [values[0], values[1], values[2]],
            };
            assert_eq!(*limits, want);
        }
        Command::Reply(text) => assert!(text.ends_with("\r\n") && text.starts_with("ERR ")),
        _ => {}
    }
    for other in [line.to_ascii_uppercase(), line.to_ascii_lowercase()] {
        let again = admin::parse(&other).expect("case does not change the token count");
        assert!(
            same_kind(&again, &command),
            "{other:?}: {again:?} vs {command:?}"
        );
    }
});
