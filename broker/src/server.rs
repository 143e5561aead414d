//! The socket server: accept loop, authentication before any read, and one
//! thread per connection speaking the framed protocol.
#![forbid(unsafe_code)]

use std::io::{BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weave_common::proto::{
    read_request_bounded, write_response, ErrorCode, FrameError, Request, Response, Role,
    MAX_REQUEST_FRAME, PROTOCOL_VERSION,
};

use crate::audit::{AuditRecord, Severity};
use crate::auth::Authorizer;
use crate::connections::{ConnectionShares, ConnectionSlot};
use crate::scheduler::Broker;
use crate::syscalls::{self, PeerCredentials};

/// A connection may stay silent this long between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A client that does not take our bytes for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a streaming connection checks whether its peer hung up.
const HANGUP_POLL: Duration = Duration::from_millis(50);
/// Read buffer per connection (one request frame fits: 64 KiB + prefix).
const READ_BUFFER: usize = 8 * 1024;
/// How long the accept loop may wait to hand an over-share caller its
/// `Busy` (a fresh socket's buffer is empty, so it never should).
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// What an over-share caller is told to wait before trying again.
const CONNECTION_RETRY_MS: u32 = 1000;

/// Serves `listener` until the broker shuts down. Each authorized caller
/// takes a place of its uid's share ([`ConnectionShares`], `[limits]`).
pub fn serve(listener: &UnixListener, broker: &Arc<Broker>, authorizer: &Arc<Authorizer>) {
    let shares = ConnectionShares::new(&broker.settings().limits);
    let hello_timeout = broker.settings().limits.hello_timeout();
    for stream in listener.incoming() {
        if broker.is_shutting_down() {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                eprintln!("weave-broker: accept failed: {error}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // Credentials first: nothing is read before the peer is known.
        let peer = match syscalls::peer_credentials(&stream) {
            Ok(peer) => peer,
            Err(error) => {
                eprintln!("weave-broker: SO_PEERCRED failed: {error}");
                continue;
            }
        };
        let Some(role) = authorizer.role_of(&peer) else {
            broker.audit().record(
                Severity::Warning,
                &AuditRecord::new("connection_rejected")
                    .field("uid", peer.uid)
                    .field("gid", peer.gid)
                    .field("pid", peer.pid),
            );
            // Dropping closes without a byte written.
            drop(stream);
            continue;
        };
        let slot = match shares.admit(peer.uid, role) {
            Ok(slot) => slot,
            Err(refusal) => {
                broker.audit().record(
                    Severity::Warning,
                    &AuditRecord::new("connection_limit")
                        .field("uid", peer.uid)
                        .field("pid", peer.pid)
                        .field("reason", refusal.name()),
                );
                // An authenticated caller learns why (a zero-byte close
                // means "not permitted"); then the connection is closed.
                let mut stream = stream;
                let _ = stream.set_write_timeout(Some(REFUSAL_WRITE_TIMEOUT));
                let _ = write_response(
                    &mut stream,
                    &Response::Error(ErrorCode::Busy {
                        retry_after_ms: CONNECTION_RETRY_MS,
                    }),
                );
                continue;
            }
        };
        let broker = Arc::clone(broker);
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{}", peer.pid))
            .stack_size(256 * 1024)
            .spawn(move || {
                Connection {
                    stream,
                    peer,
                    role,
                    broker,
                    _slot: slot,
                }
                .run(Instant::now() + hello_timeout);
            });
        if let Err(error) = spawned {
            eprintln!("weave-broker: cannot start a connection thread: {error}");
        }
    }
}

struct Connection {
    stream: UnixStream,
    peer: PeerCredentials,
    role: Role,
    broker: Arc<Broker>,
    /// The place in the uid's share, given back when the connection ends.
    _slot: ConnectionSlot,
}

/// Reads from the socket; while a deadline is set, no read may end after
/// it, however the bytes trickle in (a caller that sends one byte every few
/// seconds cannot hold its place past the Hello deadline).
struct DeadlineReader {
    stream: UnixStream,
    deadline: Option<Instant>,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        self.stream.read(buf)
    }
}

/// The connection ends after this.
struct Closed;

impl Connection {
    /// Serves the connection; `hello_by` is when its Hello must be in.
    fn run(mut self, hello_by: Instant) {
        if self.stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
            return;
        }
        // Buffered reads: a request usually arrives in one read syscall
        // (prefix and body together) instead of two.
        let mut reader = match self.stream.try_clone() {
            Ok(clone) => BufReader::with_capacity(
                READ_BUFFER,
                DeadlineReader {
                    stream: clone,
                    deadline: Some(hello_by),
                },
            ),
            Err(_) => return,
        };
        let mut greeted = false;
        loop {
            // Only a greeted caller may send an image request: the first
            // frame must be a Hello, held to the ordinary limit.
            let max_image_request = if greeted {
                self.broker.settings().limits.max_image_request_bytes
            } else {
                MAX_REQUEST_FRAME
            };
            let request = match read_request_bounded(&mut reader, max_image_request) {
                Ok(request) => request,
                Err(error) if !greeted => {
                    self.hello_missing(&error);
                    return;
                }
                Err(error) => {
                    self.frame_error(&error);
                    return;
                }
            };
            let result = if greeted {
                self.dispatch(request)
            } else {
                greeted = true;
                // From now on, the idle timeout between requests.
                reader.get_mut().deadline = None;
                if self.stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err() {
                    return;
                }
                self.hello(request)
            };
            if result.is_err() {
                return;
            }
        }
    }

    fn send(&mut self, response: &Response) -> Result<(), Closed> {
        write_response(&mut self.stream, response).map_err(|error| {
            if error.is_timeout() {
                // A reader that took nothing for WRITE_TIMEOUT: dropped, and
                // the drop is on record.
                self.broker.audit().record(
                    Severity::Notice,
                    &AuditRecord::new("client_dropped")
                        .field("uid", self.peer.uid)
                        .field("pid", self.peer.pid)
                        .field("reason", "write_timeout")
                        .field("after_s", WRITE_TIMEOUT.as_secs()),
                );
            }
            Closed
        })
    }

    /// The first frame did not arrive (whole) before the Hello deadline:
    /// the caller is told so and closed; any other broken first frame is a
    /// frame error as usual.
    fn hello_missing(&mut self, error: &FrameError) {
        if !error.is_timeout() {
            self.frame_error(error);
            return;
        }
        self.broker.audit().record(
            Severity::Notice,
            &AuditRecord::new("hello_timeout")
                .field("uid", self.peer.uid)
                .field("pid", self.peer.pid),
        );
        let _ = self.send(&Response::Error(ErrorCode::ProtocolError {
            reason: format!(
                "no Hello within {} s of connecting; send Hello first",
                self.broker.settings().limits.hello_timeout_s
            ),
        }));
    }

    fn frame_error(&mut self, error: &FrameError) {
        let Some(code) = error.to_error_code() else {
            return;
        };
        // A field the decoder could name (an unknown scheduler index) is
        // audited by that name; everything else is the frame's fault.
        let (field, reason) = match &code {
            ErrorCode::ProtocolError { reason } => ("frame", reason.as_str()),
            ErrorCode::InvalidParameter { field, .. } => (field.as_str(), "unknown index"),
            _ => ("frame", "encoding"),
        };
        self.broker.audit().record(
            Severity::Notice,
            &AuditRecord::new("invalid_request")
                .field("uid", self.peer.uid)
                .field("pid", self.peer.pid)
                .field("field", field)
                .field("reason", reason),
        );
        let _ = self.send(&Response::Error(code));
    }

    fn hello(&mut self, request: Request) -> Result<(), Closed> {
        let Request::Hello {
            version,
            client_name,
        } = request
        else {
            self.protocol_error("the first request must be Hello")?;
            return Err(Closed);
        };
        if version != PROTOCOL_VERSION {
            self.protocol_error("unsupported protocol version")?;
            return Err(Closed);
        }
        if let Err(error) = weave_common::validate::validate_client_name(&client_name) {
            self.broker.audit().record(
                Severity::Notice,
                &AuditRecord::new("invalid_request")
                    .field("uid", self.peer.uid)
                    .field("pid", self.peer.pid)
                    .field("field", error.field()),
            );
            self.send(&Response::Error(error.into()))?;
            return Err(Closed);
        }
        self.send(&Response::Hello {
            version: PROTOCOL_VERSION,
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            role: self.role,
            mode: self.broker.mode(),
        })
    }

    fn protocol_error(&mut self, reason: &str) -> Result<(), Closed> {
        self.broker.audit().record(
            Severity::Notice,
            &AuditRecord::new("invalid_request")
                .field("uid", self.peer.uid)
                .field("pid", self.peer.pid)
                .field("field", "message")
                .field("reason", reason),
        );
        self.send(&Response::Error(ErrorCode::ProtocolError {
            reason: reason.to_owned(),
        }))
    }

    fn admin_audit(&self, verb: &str, target: Option<&str>, result: &Result<(), ErrorCode>) {
        let mut record = AuditRecord::new("admin")
            .field("uid", self.peer.uid)
            .field("pid", self.peer.pid)
            .field("verb", verb);
        if let Some(target) = target {
            record = record.field("model", target);
        }
        let outcome = match result {
            Ok(()) => "ok",
            Err(code) => code.name(),
        };
        self.broker
            .audit()
            .record(Severity::Notice, &record.field("outcome", outcome));
    }

    fn dispatch(&mut self, request: Request) -> Result<(), Closed> {
        let is_admin = self.role == Role::Admin;
        if request.requires_admin() && !is_admin {
            self.broker.audit().record(
                Severity::Warning,
                &AuditRecord::new("not_permitted")
                    .field("uid", self.peer.uid)
                    .field("pid", self.peer.pid)
                    .field("verb", request.verb()),
            );
            return self.send(&Response::Error(ErrorCode::NotPermitted {
                verb: request.verb().to_owned(),
            }));
        }
        // Admin verbs name models as Generate does: the same rule, checked
        // before any lookup, so a bad id is never echoed back or logged.
        let named_model = match &request {
            Request::Load { model_id }
            | Request::Pin { model_id }
            | Request::Unpin { model_id }
            | Request::QuarantineClear { model_id } => Some(model_id.as_str()),
            _ => None,
        };
        if let Some(Err(error)) = named_model.map(weave_common::validate::validate_model_id) {
            self.broker.audit().record(
                Severity::Notice,
                &AuditRecord::new("invalid_request")
                    .field("uid", self.peer.uid)
                    .field("pid", self.peer.pid)
                    .field("verb", request.verb())
                    .field("field", error.field()),
            );
            return self.send(&Response::Error(error.into()));
        }
        let uid = self.peer.uid;
        let broker = Arc::clone(&self.broker);
        let response = match request {
            Request::Hello { .. } => {
                self.protocol_error("Hello was already sent")?;
                return Err(Closed);
            }
            Request::ListModels => Response::Models(broker.models(is_admin)),
            Request::Status => Response::Status(broker.status(is_admin)),
            Request::Generate(generate) => return self.generate(&generate),
            Request::Cancel { job_id } => {
                if broker.cancel(uid, is_admin, job_id) {
                    Response::Ok
                } else {
                    // Same answer for "no such job" and "not yours".
                    Response::Error(ErrorCode::InvalidParameter {
                        field: "job_id".to_owned(),
                        allowed: "the id of one of your queued or running jobs".to_owned(),
                    })
                }
            }
            Request::Jobs => Response::Jobs(broker.jobs(uid, false)),
            Request::AllJobs => {
                self.admin_audit("all_jobs", None, &Ok(()));
                Response::Jobs(broker.jobs(uid, true))
            }
            Request::ChannelStats => {
                self.admin_audit("channel_stats", None, &Ok(()));
                Response::ChannelStats(broker.channel_report())
            }
            Request::Load { model_id } => {
                let result = broker.load(&model_id);
                self.admin_audit("load", Some(&model_id), &result);
                to_response(result)
            }
            Request::Unload => {
                let result = broker.unload();
                self.admin_audit("unload", None, &result);
                to_response(result)
            }
            Request::Pin { model_id } => {
                let result = broker.pin(&model_id, true);
                self.admin_audit("pin", Some(&model_id), &result);
                to_response(result)
            }
            Request::Unpin { model_id } => {
                let result = broker.pin(&model_id, false);
                self.admin_audit("unpin", Some(&model_id), &result);
                to_response(result)
            }
            Request::Drain => {
                broker.set_draining(true);
                self.admin_audit("drain", None, &Ok(()));
                Response::Ok
            }
            Request::Resume => {
                broker.set_draining(false);
                self.admin_audit("resume", None, &Ok(()));
                Response::Ok
            }
            Request::RotateKeys => {
                let result = broker.rotate_keys();
                self.admin_audit("rotate_keys", None, &result);
                to_response(result)
            }
            Request::QuarantineClear { model_id } => {
                let result = broker.clear_quarantine(&model_id);
                self.admin_audit("quarantine_clear", Some(&model_id), &result);
                to_response(result)
            }
        };
        self.send(&response)
    }

    fn generate(&mut self, request: &weave_common::proto::GenerateRequest) -> Result<(), Closed> {
        let admission = match self.broker.submit(self.peer.uid, request) {
            Ok(admission) => admission,
            Err(code) => {
                let mut record = AuditRecord::new("generate_refused")
                    .field("uid", self.peer.uid)
                    .field("pid", self.peer.pid)
                    .field("error", code.name());
                if let ErrorCode::InvalidParameter { field, .. } = &code {
                    record = record.field("field", field);
                }
                if let ErrorCode::UnknownModel { .. } = &code {
                    record = record.field("field", "model_id");
                }
                self.broker.audit().record(Severity::Notice, &record);
                return self.send(&Response::Error(code));
            }
        };
        let broker = Arc::clone(&self.broker);
        let _streaming = broker.stream_guard();
        let job_id = admission.job_id;
        let queued = Response::Queued {
            job_id,
            position: admission.position,
        };
        if self.send(&queued).is_err() {
            self.broker.cancel(self.peer.uid, true, job_id);
            return Err(Closed);
        }
        let fd = self.stream.as_raw_fd();
        loop {
            match admission.events.recv_timeout(HANGUP_POLL) {
                Ok(event) => {
                    let done = event.ends_generate_stream();
                    let is_preview = matches!(event, Response::Preview { .. });
                    let sent = self.send(&event);
                    if is_preview {
                        // Out of the channel and into the socket (or lost
                        // with it): room for the next preview.
                        admission.previews.written();
                    }
                    if sent.is_err() {
                        self.broker.cancel(self.peer.uid, true, job_id);
                        return Err(Closed);
                    }
                    if done {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if syscalls::peer_hung_up(fd) {
                        self.broker.cancel(self.peer.uid, true, job_id);
                        self.broker.audit().record(
                            Severity::Info,
                            &AuditRecord::new("client_disconnected")
                                .field("uid", self.peer.uid)
                                .field("job", job_id),
                        );
                        return Err(Closed);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.send(&Response::Error(ErrorCode::Internal));
                    return Err(Closed);
                }
            }
        }
    }
}

fn to_response(result: Result<(), ErrorCode>) -> Response {
    match result {
        Ok(()) => Response::Ok,
        Err(code) => Response::Error(code),
    }
}
