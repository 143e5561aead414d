//! A minimal client for the demo and the cross-process tests.
//!
//! weave-probe-client --socket PATH silent-read
//!     connect, send nothing, read until EOF; prints `bytes=N`
//! weave-probe-client --socket PATH hello-read
//!     connect, send Hello, read until EOF; prints `bytes=N`
//! weave-probe-client --socket PATH status
//!     handshake and Status; prints `role=...`
//! weave-probe-client --socket PATH drain
//!     handshake and the admin verb Drain; prints `ok` or `error=<code>`
//! weave-probe-client --socket PATH hold --count N --seconds S
//!     open N connections and send nothing (a silent connection holder);
//!     prints `holding`, waits S seconds, then what each connection got:
//!     `busy=B hello_timeout=H eof=E other=O open=P`
//! weave-probe-client --socket PATH generate --prompt TEXT --out FILE [--model ID] [--steps N] [--seed N] [--width N] [--height N]
//!     generate one image, write the PNG to FILE; prints progress and the path
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use weave_common::proto::{
    read_response, write_request, GenerateRequest, Request, Response, DEFAULT_MAX_RESPONSE_FRAME,
    PROTOCOL_VERSION,
};

fn usage() -> ExitCode {
    eprintln!(
        "usage: weave-probe-client --socket PATH (silent-read | hello-read | \
         generate --prompt TEXT --out FILE [--model ID] [--steps N] [--seed N] [--width N] [--height N])"
    );
    ExitCode::from(2)
}

fn read_all(mut stream: UnixStream) -> usize {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    match stream.read_to_end(&mut buf) {
        Ok(_) => buf.len(),
        Err(error) => {
            eprintln!("read error: {error}");
            buf.len()
        }
    }
}

fn hello(stream: &mut UnixStream) -> Result<(), String> {
    write_request(
        stream,
        &Request::Hello {
            version: PROTOCOL_VERSION,
            client_name: "weave-probe-client".into(),
        },
    )
    .map_err(|e| e.to_string())?;
    match read_response(stream, DEFAULT_MAX_RESPONSE_FRAME).map_err(|e| e.to_string())? {
        Response::Hello { .. } => Ok(()),
        other => Err(format!("handshake refused: {other:?}")),
    }
}

/// Handshake, then `Status`; prints the role granted.
fn hello_role(stream: &mut UnixStream) -> Result<(), String> {
    write_request(
        stream,
        &Request::Hello {
            version: PROTOCOL_VERSION,
            client_name: "weave-probe-client".into(),
        },
    )
    .map_err(|e| e.to_string())?;
    match read_response(stream, DEFAULT_MAX_RESPONSE_FRAME).map_err(|e| e.to_string())? {
        Response::Hello { role, .. } => println!("role={role:?}"),
        other => return Err(format!("handshake refused: {other:?}")),
    }
    write_request(stream, &Request::Status).map_err(|e| e.to_string())?;
    match read_response(stream, DEFAULT_MAX_RESPONSE_FRAME).map_err(|e| e.to_string())? {
        Response::Status(status) => {
            println!("worker={:?} queue={}", status.worker, status.queue_depth);
            Ok(())
        }
        other => Err(format!("status refused: {other:?}")),
    }
}

/// Holds `count` silent connections for `wait`, then classifies what each
/// received.
fn hold(socket: &str, count: usize, wait: Duration) -> ExitCode {
    use std::io::Write;
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        match UnixStream::connect(socket) {
            Ok(stream) => held.push(stream),
            Err(error) => {
                println!("connect_error={}", error.raw_os_error().unwrap_or(0));
                return ExitCode::from(3);
            }
        }
    }
    println!("holding {}", held.len());
    let _ = std::io::stdout().flush();
    std::thread::sleep(wait);
    let (mut busy, mut hello_timeout, mut eof, mut other, mut open) = (0, 0, 0, 0, 0);
    for mut stream in held {
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        match read_response(&mut stream, DEFAULT_MAX_RESPONSE_FRAME) {
            Ok(Response::Error(weave_common::proto::ErrorCode::Busy { .. })) => busy += 1,
            Ok(Response::Error(weave_common::proto::ErrorCode::ProtocolError { reason }))
                if reason.contains("no Hello") =>
            {
                hello_timeout += 1
            }
            Err(weave_common::proto::FrameError::Closed) => eof += 1,
            Err(error) if error.is_timeout() => open += 1,
            _ => other += 1,
        }
    }
    println!("busy={busy} hello_timeout={hello_timeout} eof={eof} other={other} open={open}");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(socket) = value("--socket") else {
        return usage();
    };
    let command = args.iter().find(|a| {
        [
            "silent-read",
            "hello-read",
            "status",
            "drain",
            "generate",
            "hold",
        ]
        .contains(&a.as_str())
    });
    if command.map(String::as_str) == Some("hold") {
        let count = value("--count").and_then(|v| v.parse().ok()).unwrap_or(600);
        let seconds = value("--seconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        return hold(&socket, count, Duration::from_secs(seconds));
    }
    let mut stream = match UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(error) => {
            println!("connect_error={}", error.raw_os_error().unwrap_or(0));
            return ExitCode::from(3);
        }
    };
    match command.map(String::as_str) {
        Some("silent-read") => {
            println!("bytes={}", read_all(stream));
            ExitCode::SUCCESS
        }
        Some("hello-read") => {
            // The write may fail (EPIPE) when the broker already closed.
            let _ = write_request(
                &mut stream,
                &Request::Hello {
                    version: PROTOCOL_VERSION,
                    client_name: "weave-probe-client".into(),
                },
            );
            println!("bytes={}", read_all(stream));
            ExitCode::SUCCESS
        }
        Some("drain") => {
            // An admin verb: prints `ok` or `error=<code name>`.
            if let Err(error) = hello(&mut stream) {
                eprintln!("{error}");
                return ExitCode::FAILURE;
            }
            write_request(&mut stream, &Request::Drain).unwrap();
            match read_response(&mut stream, DEFAULT_MAX_RESPONSE_FRAME) {
                Ok(Response::Ok) => println!("ok"),
                Ok(Response::Error(code)) => println!("error={}", code.name()),
                other => println!("unexpected {other:?}"),
            }
            ExitCode::SUCCESS
        }
        Some("status") => {
            if let Err(error) = hello_role(&mut stream) {
                eprintln!("{error}");
                println!("bytes=0");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Some("generate") => {
            let (Some(prompt), Some(out)) = (value("--prompt"), value("--out")) else {
                return usage();
            };
            if let Err(error) = hello(&mut stream) {
                eprintln!("{error}");
                return ExitCode::FAILURE;
            }
            let request = GenerateRequest {
                model_id: value("--model").unwrap_or_else(|| "digits".into()),
                prompt,
                negative_prompt: String::new(),
                width: value("--width").and_then(|s| s.parse().ok()),
                height: value("--height").and_then(|s| s.parse().ok()),
                steps: value("--steps").and_then(|s| s.parse().ok()),
                guidance: None,
                seed: value("--seed").and_then(|s| s.parse().ok()),
                scheduler: None,
                batch: 1,
                tag: value("--tag"),
                use_model_negative: true,
                init_image: None,
                mask: None,
                strength: None,
                loras: Vec::new(),
                preview_every: 0,
            };
            write_request(&mut stream, &Request::Generate(request)).unwrap();
            loop {
                let event = match read_response(&mut stream, DEFAULT_MAX_RESPONSE_FRAME) {
                    Ok(event) => event,
                    Err(error) => {
                        eprintln!("connection error: {error}");
                        return ExitCode::FAILURE;
                    }
                };
                match event {
                    Response::Queued { job_id, position } => {
                        println!("queued job={job_id} position={position}")
                    }
                    Response::Started { seed, .. } => println!("started seed={seed}"),
                    Response::Progress { step, total, .. } => println!("progress {step}/{total}"),
                    Response::Image {
                        png, width, height, ..
                    } => {
                        let out = PathBuf::from(&out);
                        std::fs::write(&out, &png).unwrap();
                        println!(
                            "image {width}x{height} {} bytes -> {}",
                            png.len(),
                            out.display()
                        );
                    }
                    Response::Finished { .. } => return ExitCode::SUCCESS,
                    Response::Error(code) => {
                        eprintln!("error {}: {code}", code.name());
                        return ExitCode::FAILURE;
                    }
                    other => println!("{other:?}"),
                }
            }
        }
        _ => usage(),
    }
}
