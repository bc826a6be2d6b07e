//! Packet decode and encode per packet type and payload size, without sockets.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gearshift::protocol::{self, Decoded, Frame, PacketType};

fn request(ty: PacketType, args: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    protocol::encode_request(&mut v, ty, args);
    v
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for size in [0usize, 64, 1024, 64 * 1024] {
        let payload = vec![b'x'; size];
        let cases = [
            (
                "SUBMIT_JOB",
                request(
                    PacketType::SubmitJob,
                    &[
                        b"function",
                        b"3f2504e0-4f89-11d3-9a0c-0305e82c3301",
                        &payload,
                    ],
                ),
            ),
            (
                "WORK_COMPLETE",
                request(PacketType::WorkComplete, &[b"H:host:123456", &payload]),
            ),
        ];
        for (name, bytes) in cases {
            group.throughput(Throughput::Bytes(bytes.len() as u64));
            group.bench_with_input(BenchmarkId::new(name, size), &bytes, |b, bytes| {
                b.iter(|| match protocol::decode(black_box(bytes), 1 << 30, 8192) {
                    Ok(Decoded::Frame(Frame::Packet(p), used)) => black_box((p.arg(0).len(), used)),
                    _ => unreachable!(),
                })
            });
        }
    }
    let grab = request(PacketType::GrabJob, &[]);
    group.throughput(Throughput::Elements(1));
    group.bench_function("GRAB_JOB", |b| {
        b.iter(|| {
            matches!(
                protocol::decode(black_box(&grab), 1 << 30, 8192),
                Ok(Decoded::Frame(..))
            )
        })
    });
    group.bench_function("admin line", |b| {
        b.iter(
            || match protocol::decode(black_box(b"status\r\n"), 1 << 30, 8192) {
                Ok(Decoded::Frame(Frame::Line(l), _)) => protocol::admin::parse(l).is_ok(),
                _ => unreachable!(),
            },
        )
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for size in [0usize, 64, 1024, 64 * 1024] {
        let payload = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("JOB_ASSIGN", size),
            &payload,
            |b, payload| {
                let mut out = Vec::with_capacity(size + 64);
                b.iter(|| {
                    out.clear();
                    protocol::encode(
                        &mut out,
                        PacketType::JobAssign,
                        &[b"H:host:123456", b"function", payload],
                    );
                    black_box(out.len())
                })
            },
        );
    }
    group.bench_function("JOB_CREATED", |b| {
        let mut out = Vec::with_capacity(64);
        b.iter(|| {
            out.clear();
            protocol::encode(&mut out, PacketType::JobCreated, &[b"H:host:123456"]);
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
