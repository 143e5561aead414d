//! Channel throughput against its two bounds, measured in the same run:
//! (a) the cipher alone, encrypt-in-place then decrypt-in-place of one
//!     buffer on one core (what the ring can at best approach), and
//! (b) one memcpy of the message.
//!
//! `cargo bench -p weave-common --bench channel` prints a table; set
//! `WEAVE_BENCH_RUNS` (default 15) to change the number of runs the medians
//! are taken over.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
use weave_common::shm::{
    ChannelKey, Direction, Doorbell, Reader, RingGeometry, SealedSegment, SegmentId, Writer,
};

const SIZES: [(&str, usize); 2] = [("768 KiB", 768 << 10), ("3 MiB", 3 << 20)];

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// CPU time this thread has used. The build machine is shared, so wall
/// time of a single-threaded loop mostly measures the other tenants.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Thread CPU time per operation over `reps` repetitions.
fn time_per_op(reps: usize, op: &mut impl FnMut()) -> Duration {
    let start = thread_cpu_time();
    for _ in 0..reps {
        op();
    }
    (thread_cpu_time() - start) / reps as u32
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn channel(size: usize) -> (Writer, Reader) {
    let geometry = RingGeometry::for_max_message(4, size).expect("geometry");
    let key = ChannelKey::generate(1).expect("rng");
    let id = SegmentId(1);
    let segment = SealedSegment::create(id, Direction::WorkerToBroker, geometry).expect("segment");
    let fd = segment.fd().try_clone_to_owned().expect("dup");
    let received =
        SealedSegment::from_fd(fd, id, Direction::WorkerToBroker, geometry).expect("from_fd");
    let bell = Doorbell::new().expect("eventfd");
    let reader_bell = bell.try_clone().expect("dup");
    (
        Writer::new(segment, bell, &key),
        Reader::new(received, reader_bell, &key).expect("reader"),
    )
}

fn gbps(size: usize, t: Duration) -> f64 {
    size as f64 / t.as_secs_f64() / 1e9
}

fn main() {
    let runs: usize = std::env::var("WEAVE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let avx512 =
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl");
    println!("channel benchmark: median of {runs} runs, CPU has avx512f+vl: {avx512}");
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "size",
        "cipher GB/s",
        "memcpy GB/s",
        "ring GB/s",
        "ring2t GB/s",
        "ring/(a)",
        "ring/(b)",
        "ring2t/(a)"
    );
    for (label, size) in SIZES {
        let reps = (64 << 20) / size; // ~64 MiB per run
        let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
        let nonce = XNonce::from([9u8; 24]);
        let mut buf = vec![0x5Au8; size];
        let mut bound_op = || {
            let tag = cipher
                .encrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into())
                .expect("encrypt");
            cipher
                .decrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into(), &tag)
                .expect("decrypt");
            black_box(&buf);
        };
        let src = vec![0xA5u8; size];
        let mut dst = vec![0u8; size];
        let mut copy_op = || {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        };
        let (mut writer, mut reader) = channel(size);
        let message = vec![0x3Cu8; size];
        let mut ring_op = || {
            writer.try_send(1, &message).expect("send");
            let m = reader.try_recv().expect("recv").expect("message");
            black_box(m.payload);
        };
        // Interleave the three in every run so that load from other
        // processes hits them alike; ratios are taken per run.
        let (mut bounds, mut copies, mut rings, mut vs_bound, mut vs_copy) =
            (vec![], vec![], vec![], vec![], vec![]);
        for run in 0..=runs {
            let tb = time_per_op(reps, &mut bound_op);
            let tc = time_per_op(reps, &mut copy_op);
            let tr = time_per_op(reps, &mut ring_op);
            if run == 0 {
                continue; // warm-up: page faults, caches
            }
            bounds.push(tb);
            copies.push(tc);
            rings.push(tr);
            vs_bound.push(tb.as_secs_f64() / tr.as_secs_f64());
            vs_copy.push(tc.as_secs_f64() / tr.as_secs_f64());
        }
        let (bound, copy, ring) = (median(bounds), median(copies), median(rings));

        // Writer and reader on two threads (wall time): encrypt and decrypt
        // overlap, so this can exceed the single-core bound on an idle 2+
        // core machine, and falls below it on a busy one.
        let (mut writer, mut reader) = channel(size);
        let message = vec![0x3Cu8; size];
        let total = reps * (runs + 1);
        let producer = std::thread::spawn(move || {
            for _ in 0..total {
                writer
                    .send(1, &message, Duration::from_secs(60))
                    .expect("send");
            }
        });
        let mut samples = Vec::with_capacity(runs);
        for run in 0..=runs {
            let start = Instant::now();
            for _ in 0..reps {
                let m = reader.recv_timeout(Duration::from_secs(60)).expect("recv");
                black_box(m.payload);
            }
            if run > 0 {
                samples.push(start.elapsed() / reps as u32);
            }
        }
        producer.join().expect("producer");
        let ring2 = median(samples);

        println!(
            "{:<8} {:>12.2} {:>12.2} {:>12.2} {:>12.2} {:>9.1}% {:>9.1}% {:>9.1}%",
            label,
            gbps(size, bound),
            gbps(size, copy),
            gbps(size, ring),
            gbps(size, ring2),
            100.0 * median_f64(vs_bound),
            100.0 * median_f64(vs_copy),
            100.0 * bound.as_secs_f64() / ring2.as_secs_f64(),
        );
    }
    println!("cipher = XChaCha20-Poly1305 encrypt_in_place + decrypt_in_place of one buffer (thread CPU time);");
    println!("memcpy = one copy of the message (thread CPU time);");
    println!(
        "ring = try_send + try_recv through a real sealed segment, one thread (thread CPU time);"
    );
    println!("ring2t = writer and reader on two threads (wall time); ratios are medians of per-run ratios.");
}
