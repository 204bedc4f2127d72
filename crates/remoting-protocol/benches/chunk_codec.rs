//! Chunk codec throughput: decoding and encoding the channel's framing, in
//! MB/s of payload. `cargo bench -p remoting-protocol --bench chunk_codec`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use remoting_protocol::chunk::{put_command, SEND_CHUNK_PAYLOAD};
use remoting_protocol::{Chunk, ChunkCodec, CommandCodec};
use tokio_util::codec::{Decoder, Encoder};

const STREAM: usize = 16 * 1024 * 1024;

/// A stream of commands of `command_len` bytes each, in remoting's chunking.
fn stream(command_len: usize) -> BytesMut {
    let mut wire = BytesMut::new();
    let payload = vec![0x5a; command_len];
    while wire.len() < STREAM {
        put_command(&mut wire, &payload);
    }
    wire
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(STREAM as u64));
    let chunked = stream(SEND_CHUNK_PAYLOAD);
    group.bench_function("chunks_8k", |b| {
        b.iter_batched(
            || chunked.clone(),
            |mut buf| {
                let mut n = 0;
                while let Some(chunk) = ChunkCodec.decode(&mut buf).expect("valid") {
                    n += chunk.payload.len();
                }
                n
            },
            BatchSize::LargeInput,
        )
    });
    for (name, len) in [("commands_1k", 1024), ("commands_64k_joined", 64 * 1024)] {
        let wire = stream(len);
        group.bench_function(name, |b| {
            b.iter_batched(
                || wire.clone(),
                |mut buf| {
                    let mut codec = CommandCodec::default();
                    let mut n = 0;
                    while let Some(command) = codec.decode(&mut buf).expect("valid") {
                        n += command.payload.len();
                    }
                    n
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(STREAM as u64));
    let payload = Bytes::from(vec![0x5a; SEND_CHUNK_PAYLOAD]);
    let count = STREAM / SEND_CHUNK_PAYLOAD;
    let mut out = BytesMut::with_capacity(STREAM + 2 * count);
    group.bench_function("chunks_8k", |b| {
        b.iter(|| {
            out.clear();
            for _ in 0..count {
                let chunk = Chunk {
                    last: true,
                    payload: payload.clone(),
                };
                ChunkCodec.encode(chunk, &mut out).expect("fits");
            }
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
