//! One connection to the broker: connect, handshake, request/response.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use weave_common::proto::{
    read_response, write_request, ErrorCode, FrameError, Mode, Request, Response, Role,
    DEFAULT_MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
};

/// Where the system-mode daemon listens.
pub const SYSTEM_SOCKET: &str = "/run/weave/weave.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the weave daemon at {path}: {source}\n\
         hint: is it running? (`systemctl status weave` or `systemctl --user status weave`); \
         use --socket or WEAVE_SOCKET to point elsewhere"
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error(
        "the daemon at {path} is not accepting you: your user may not use it\n\
         hint: ask an administrator to add you to the daemon's client group \
         (then log in again), or use your own user-mode daemon"
    )]
    Rejected { path: PathBuf },
    #[error("{0}")]
    Daemon(ErrorCode),
    #[error("lost the connection to the daemon: {0}")]
    Frame(#[from] FrameError),
    #[error(
        "the daemon sent an unexpected answer ({0}); is sshmctl the same version as the daemon?"
    )]
    Unexpected(&'static str),
}

impl ClientError {
    /// The documented process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Connect { .. } | ClientError::Rejected { .. } => 3,
            ClientError::Daemon(code) => match code {
                ErrorCode::NotPermitted { .. } => 3,
                ErrorCode::Busy { .. }
                | ErrorCode::RateLimited { .. }
                | ErrorCode::ShuttingDown => 4,
                ErrorCode::InvalidParameter { .. } | ErrorCode::UnknownModel { .. } => 5,
                ErrorCode::WorkerCrashed
                | ErrorCode::TimedOut
                | ErrorCode::ModelQuarantined
                | ErrorCode::Cancelled => 6,
                ErrorCode::ProtocolError { .. } | ErrorCode::Internal => 1,
            },
            ClientError::Frame(_) | ClientError::Unexpected(_) => 1,
        }
    }
}

/// The socket to use when neither --socket nor WEAVE_SOCKET is given: the
/// caller's user-mode daemon if one is running, else the system daemon.
pub fn default_socket() -> PathBuf {
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        let user = Path::new(&runtime).join("weave/weave.sock");
        if user.exists() {
            return user;
        }
    }
    PathBuf::from(SYSTEM_SOCKET)
}

/// A handshaken connection.
pub struct Connection {
    stream: UnixStream,
    path: PathBuf,
    pub role: Role,
    pub mode: Mode,
    pub server_version: String,
}

impl Connection {
    pub fn open(path: &Path) -> Result<Self, ClientError> {
        let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            client_name: format!("sshmctl-{}", env!("CARGO_PKG_VERSION")),
        };
        // An unauthorized caller is closed without a byte: the write may
        // fail with EPIPE or the read see a clean EOF. Both mean "rejected".
        let rejected = || ClientError::Rejected {
            path: path.to_owned(),
        };
        match write_request(&mut stream, &hello) {
            Ok(()) => {}
            Err(FrameError::Io(e)) if is_disconnect(&e) => return Err(rejected()),
            Err(e) => return Err(e.into()),
        }
        match read_response(&mut stream, DEFAULT_MAX_RESPONSE_FRAME) {
            Ok(Response::Hello {
                role,
                mode,
                server_version,
                ..
            }) => Ok(Self {
                stream,
                path: path.to_owned(),
                role,
                mode,
                server_version,
            }),
            Ok(Response::Error(code)) => Err(ClientError::Daemon(code)),
            Ok(other) => Err(ClientError::Unexpected(response_name(&other))),
            Err(FrameError::Closed) => Err(rejected()),
            Err(FrameError::Io(e)) if is_disconnect(&e) => Err(rejected()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        write_request(&mut self.stream, request)?;
        Ok(())
    }

    /// The next response; a `Response::Error` becomes `ClientError::Daemon`.
    pub fn next(&mut self) -> Result<Response, ClientError> {
        match read_response(&mut self.stream, DEFAULT_MAX_RESPONSE_FRAME)? {
            Response::Error(code) => Err(ClientError::Daemon(code)),
            other => Ok(other),
        }
    }

    /// Sends `request` and returns its single response.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.send(request)?;
        self.next()
    }

    /// Sends an admin or control request that is answered by `Ok`.
    pub fn call_ok(&mut self, request: &Request) -> Result<(), ClientError> {
        match self.call(request)? {
            Response::Ok => Ok(()),
            other => Err(ClientError::Unexpected(response_name(&other))),
        }
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
    )
}

/// A short name of a response variant, for "unexpected answer" errors.
pub fn response_name(response: &Response) -> &'static str {
    match response {
        Response::Hello { .. } => "hello",
        Response::Models(_) => "models",
        Response::Status(_) => "status",
        Response::Queued { .. } => "queued",
        Response::Position { .. } => "position",
        Response::Started { .. } => "started",
        Response::Progress { .. } => "progress",
        Response::Image { .. } => "image",
        Response::Finished { .. } => "finished",
        Response::Jobs(_) => "jobs",
        Response::ChannelStats(_) => "channel_stats",
        Response::Ok => "ok",
        Response::Error(_) => "error",
    }
}
