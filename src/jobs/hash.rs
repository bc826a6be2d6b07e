//! gearmand's listing hash (PROTOCOL.md §2.3): Bob Jenkins' one-at-a-time hash on signed bytes
//! with signed 32-bit arithmetic. Used only to order admin listings exactly as gearmand does;
//! never for placement (placement hashes must not depend on a listing quirk).

/// The hash of `key`, with 0 mapped to 1 as gearmand does.
pub fn jenkins(key: &[u8]) -> u32 {
    let mut value: i32 = 0;
    for &b in key {
        value = value.wrapping_add(b as i8 as i32);
        value = value.wrapping_add(value.wrapping_shl(10));
        value ^= value >> 6;
    }
    value = value.wrapping_add(value.wrapping_shl(3));
    value ^= value >> 11;
    value = value.wrapping_add(value.wrapping_shl(15));
    match value as u32 {
        0 => 1,
        v => v,
    }
}

/// The bucket gearmand's fixed-size function table puts a name in.
pub const FUNCTION_BUCKETS: u32 = 991;

/// A stable placement hash (FNV-1a): which shard owns a function. Stable across runs and
/// versions, so nothing computed from it is ever invalidated by a restart.
pub fn placement(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gearmand_test_vectors() {
        for (key, value) in [
            (&b""[..], 1u32),
            (b"a", 3392050242),
            (b"f", 1208324078),
            (b"exc", 116784641),
            (b"reverse", 4028014295),
            (b"gb", 2762233131),
            (b"H:vm:1", 1654991873),
            (&[0xE9, 0x74, 0xE9], 1023465389),
        ] {
            assert_eq!(jenkins(key), value, "{key:?}");
        }
        assert_eq!(jenkins(b"reverse") % FUNCTION_BUCKETS, 650);
        assert_eq!(jenkins(&[0xE9, 0x74, 0xE9]) % FUNCTION_BUCKETS, 229);
    }
}
