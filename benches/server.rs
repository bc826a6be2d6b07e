//! End to end over loopback: an in-process gearshiftd (one shard), one worker thread running
//! the real worker loop, and the benchmark thread as a client submitting foreground jobs.

use std::io::{Read, Write};
use std::net::TcpStream;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gearshift::config::{self, Parsed};
use gearshift::protocol::{self, Decoded, Frame, PacketType};
use gearshift::server::{self, Server};

/// Reads one packet from a blocking stream, keeping leftovers in `buf`; `None` at EOF.
fn recv(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(PacketType, Vec<Vec<u8>>)> {
    loop {
        if let Ok(Decoded::Frame(Frame::Packet(p), used)) = protocol::decode(buf, 1 << 30, 8192) {
            let out = (p.ty, p.args().iter().map(|a| a.to_vec()).collect());
            buf.drain(..used);
            return Some(out);
        }
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn send(stream: &mut TcpStream, ty: PacketType, args: &[&[u8]]) {
    let mut v = Vec::new();
    protocol::encode_request(&mut v, ty, args);
    stream.write_all(&v).expect("write");
}

fn worker(addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    send(&mut s, PacketType::CanDo, &[b"echo"]);
    send(&mut s, PacketType::GrabJob, &[]);
    // Runs until the server goes away at the end of the benchmark.
    while let Some(packet) = recv(&mut s, &mut buf) {
        match packet {
            (PacketType::JobAssign, a) => {
                send(&mut s, PacketType::WorkComplete, &[&a[0], &a[2]]);
                send(&mut s, PacketType::GrabJob, &[]);
            }
            (PacketType::NoJob, _) => send(&mut s, PacketType::PreSleep, &[]),
            (PacketType::Noop, _) => send(&mut s, PacketType::GrabJob, &[]),
            other => panic!("worker got {other:?}"),
        }
    }
}

fn end_to_end(c: &mut Criterion) {
    let args = [
        "gearshiftd",
        "--listen=127.0.0.1",
        "--port=0",
        "--threads=1",
        "--log-file=none",
    ];
    let Ok(Parsed::Run(cfg)) = config::parse(args.iter().map(|s| s.to_string()).collect()) else {
        panic!("config")
    };
    let srv = Server::start(&cfg, server::bind(&cfg).unwrap()).unwrap();
    let addr = srv.local_addrs()[0];
    std::thread::spawn(move || worker(addr));
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let payload = [b'x'; 64];
    let mut group = c.benchmark_group("loopback");
    group.throughput(Throughput::Elements(1));
    group.bench_function("foreground job round trip (1 shard)", |b| {
        b.iter(|| {
            send(
                &mut client,
                PacketType::SubmitJob,
                &[b"echo", b"", &payload],
            );
            loop {
                if recv(&mut client, &mut buf).expect("server").0 == PacketType::WorkComplete {
                    break;
                }
            }
        })
    });
    group.finish();
    srv.shutdown(false);
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
