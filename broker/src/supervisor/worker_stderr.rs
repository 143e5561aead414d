//! The worker's stderr, read by the broker through a pipe and labelled line
//! by line, so a compromised worker cannot write lines that look like the
//! broker's own or like audit records in the broker's log.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};

/// Longest line passed on; the rest of a longer one is cut (and marked).
const MAX_LINE: usize = 4096;

/// `line` as it appears in the broker's log: control characters (escape
/// sequences, carriage returns) and invalid UTF-8 escaped, under the label.
pub(super) fn label(pid: u32, line: &[u8], cut: bool) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = format!("weave-worker[{pid}] | ");
    for c in text.trim_end_matches('\n').chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    if cut {
        out.push_str(" [line cut]");
    }
    out
}

/// Starts the thread that labels what the worker writes to `stderr`; it
/// ends at the pipe's EOF (the worker exited).
pub(super) fn forward(pid: u32, stderr: impl Read + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name(format!("worker-stderr-{pid}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::with_capacity(256);
            loop {
                line.clear();
                let read = (&mut reader)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut line);
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let cut = !line.ends_with(b"\n") && line.len() >= MAX_LINE;
                        let _ = writeln!(std::io::stderr(), "{}", label(pid, &line, cut));
                        if cut {
                            // Drop the rest of that line.
                            let mut rest = Vec::new();
                            if reader.read_until(b'\n', &mut rest).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
    if let Err(error) = spawned {
        eprintln!("weave-broker: cannot read the worker's stderr: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lines_are_labelled_and_cannot_pose_as_the_broker() {
        let forged = b"\rweave-broker: event=admin verb=drain outcome=ok\x1b[2K\n";
        let line = label(42, forged, false);
        assert_eq!(
            line,
            "weave-worker[42] | \\u{d}weave-broker: event=admin verb=drain outcome=ok\\u{1b}[2K"
        );
        assert!(line.starts_with("weave-worker[42] | "));
        assert_eq!(
            label(7, b"\xff\n", true),
            "weave-worker[7] | \u{fffd} [line cut]"
        );
    }
}
