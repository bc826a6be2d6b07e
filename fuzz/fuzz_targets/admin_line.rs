//! The admin text line parser (`protocol::admin`), fed what the decoder hands it: any bytes
//! without a line end. Checks, besides "no panic":
//! - the token limit is exact: more than `MAX_TOKENS` space-separated tokens (a leading space
//!   counting as one empty token) is refused, anything else is parsed;
//! - command words are case-insensitive: upper- and lower-casing the line gives the same command;
//! - arguments are sub-slices of the line, never invented; fixed replies end in CRLF;
//! - `maxqueue` values follow gearmand's `atoi`, saturated at `u32::MAX`.
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

fn atoi(s: &[u8]) -> u32 {
    let digits: Vec<u8> = s.iter().copied().take_while(u8::is_ascii_digit).collect();
    let text = String::from_utf8(digits).unwrap();
    match text.parse::<u128>() {
        Ok(n) => n.min(u32::MAX as u128) as u32,
        Err(_) if text.is_empty() => 0,
        Err(_) => u32::MAX, // longer than u128: saturated all the same
    }
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
