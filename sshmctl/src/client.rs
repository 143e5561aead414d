//! One connection to the broker: connect, handshake, request/response.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use weave_common::config::{default_socket_path, Config, EnvPaths};
use weave_common::proto::Mode as ConfigMode;

use weave_common::proto::{
    read_response, write_request, ErrorCode, FrameError, Mode, Request, Response, Role,
    DEFAULT_MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
};

/// Where the system-mode daemon listens.
pub const SYSTEM_SOCKET: &str = "/run/weave/weave.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no weave daemon is listening at {path}{tried}\n\
         hint: is it running? (`systemctl status weave`, `systemctl --user status weave`, \
         or start one with `weave-broker --user &`); use --socket or WEAVE_SOCKET to point elsewhere"
    )]
    NotRunning { path: PathBuf, tried: Tried },
    #[error(
        "you may not open the daemon socket {path} (permission denied){group}\n\
         hint: ask an administrator to add you to that group (`usermod -aG GROUP USER`, \
         then log in again); admins need it as well as the admin group, see sshmctl(1)"
    )]
    PermissionDenied { path: PathBuf, group: SocketGroup },
    #[error(
        "cannot connect to the weave daemon at {path}: {source}\n\
         hint: use --socket or WEAVE_SOCKET to point elsewhere"
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
            ClientError::NotRunning { .. }
            | ClientError::PermissionDenied { .. }
            | ClientError::Connect { .. }
            | ClientError::Rejected { .. } => 3,
            ClientError::Daemon(code) => match code {
                ErrorCode::NotPermitted { .. } => 3,
                ErrorCode::Busy { .. }
                | ErrorCode::RateLimited { .. }
                | ErrorCode::ShuttingDown => 4,
                ErrorCode::InvalidParameter { .. } | ErrorCode::UnknownModel { .. } => 5,
                ErrorCode::WorkerCrashed
                | ErrorCode::TimedOut
                | ErrorCode::ModelQuarantined
                | ErrorCode::ModelUnavailable
                | ErrorCode::Cancelled => 6,
                ErrorCode::ProtocolError { .. } | ErrorCode::Internal => 1,
            },
            ClientError::Frame(_) | ClientError::Unexpected(_) => 1,
        }
    }
}

/// The socket to use and how it was found, for messages that name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketChoice {
    pub path: PathBuf,
    /// Other places looked at first that had no socket.
    pub tried: Tried,
}

/// Sockets looked for and not found, rendered as `" (also tried …)"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tried(pub Vec<PathBuf>);

impl fmt::Display for Tried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = self.0.iter().map(|p| p.display().to_string()).collect();
        write!(
            f,
            " (looked first for a user-mode socket at {})",
            list.join(", ")
        )
    }
}

/// The group that owns a socket, rendered as `": it belongs to group G"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketGroup(pub Option<String>);

impl fmt::Display for SocketGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(group) => write!(f, ": it is open to members of group {group}"),
            None => Ok(()),
        }
    }
}

/// Where the sockets are, as far as the caller's environment says.
#[derive(Debug, Clone, Default)]
pub struct SocketEnv {
    /// `daemon.socket` from the user's own config, when it has one.
    pub user_config_socket: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR/weave/weave.sock`.
    pub user_default_socket: Option<PathBuf>,
}

impl SocketEnv {
    /// Reads the user's config (`$XDG_CONFIG_HOME` or `~/.config`
    /// `/weave/weave.toml`) for `daemon.socket`. A missing or broken config
    /// gives nothing here; `sshmctl config check` explains a broken one.
    pub fn from_process() -> Self {
        let env = EnvPaths::from_process();
        let user_config_socket =
            Config::default_path(ConfigMode::User, &env)
                .ok()
                .and_then(|path| {
                    let text = std::fs::read_to_string(&path).ok()?;
                    let config = Config::from_toml_str(&text, &path, ConfigMode::User).ok()?;
                    config.daemon.socket
                });
        let user_default_socket = default_socket_path(ConfigMode::User, &env).ok();
        Self {
            user_config_socket,
            user_default_socket,
        }
    }
}

/// The socket to use when neither --socket nor WEAVE_SOCKET is given: the
/// socket the user's own config names, else the user-mode default if a
/// socket is there, else the system daemon's.
pub fn default_socket(env: &SocketEnv, exists: impl Fn(&Path) -> bool) -> SocketChoice {
    if let Some(path) = &env.user_config_socket {
        return SocketChoice {
            path: path.clone(),
            tried: Tried::default(),
        };
    }
    let mut tried = Vec::new();
    if let Some(user) = &env.user_default_socket {
        if exists(user) {
            return SocketChoice {
                path: user.clone(),
                tried: Tried::default(),
            };
        }
        tried.push(user.clone());
    }
    SocketChoice {
        path: PathBuf::from(SYSTEM_SOCKET),
        tried: Tried(tried),
    }
}

fn connect_error(choice: &SocketChoice, source: io::Error) -> ClientError {
    let path = choice.path.clone();
    match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
            path,
            tried: choice.tried.clone(),
        },
        io::ErrorKind::PermissionDenied => {
            use std::os::unix::fs::MetadataExt;
            // The socket, or the first folder above it we may look at (a
            // 0750 socket folder hides the socket itself).
            let group = path
                .ancestors()
                .find_map(|p| std::fs::metadata(p).ok())
                .and_then(|meta| {
                    weave_common::accounts::group_name_by_gid(meta.gid())
                        .ok()
                        .flatten()
                });
            ClientError::PermissionDenied {
                path,
                group: SocketGroup(group),
            }
        }
        _ => ClientError::Connect { path, source },
    }
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
        Self::open_choice(&SocketChoice {
            path: path.to_owned(),
            tried: Tried::default(),
        })
    }

    pub fn open_choice(choice: &SocketChoice) -> Result<Self, ClientError> {
        let path = choice.path.as_path();
        let mut stream =
            UnixStream::connect(path).map_err(|source| connect_error(choice, source))?;
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
        Response::Preview { .. } => "preview",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(config: Option<&str>, user: Option<&str>) -> SocketEnv {
        SocketEnv {
            user_config_socket: config.map(PathBuf::from),
            user_default_socket: user.map(PathBuf::from),
        }
    }

    #[test]
    fn the_users_config_socket_wins() {
        let choice = default_socket(&env(Some("/c.sock"), Some("/u.sock")), |_| true);
        assert_eq!(choice.path, PathBuf::from("/c.sock"));
        assert!(choice.tried.0.is_empty());
    }

    #[test]
    fn a_missing_user_socket_falls_back_and_is_named() {
        let choice = default_socket(&env(None, Some("/u.sock")), |_| false);
        assert_eq!(choice.path, PathBuf::from(SYSTEM_SOCKET));
        assert_eq!(
            choice.tried.to_string(),
            " (looked first for a user-mode socket at /u.sock)"
        );
        let choice = default_socket(&env(None, Some("/u.sock")), |_| true);
        assert_eq!(choice.path, PathBuf::from("/u.sock"));
    }

    #[test]
    fn connect_errors_say_what_happened() {
        let choice = SocketChoice {
            path: PathBuf::from("/nonexistent/weave.sock"),
            tried: Tried(vec![PathBuf::from("/run/user/1/weave/weave.sock")]),
        };
        let message = connect_error(&choice, io::ErrorKind::NotFound.into()).to_string();
        assert!(message.contains("no weave daemon is listening at /nonexistent/weave.sock"));
        assert!(
            message.contains("/run/user/1/weave/weave.sock"),
            "{message}"
        );
        let message = connect_error(&choice, io::ErrorKind::PermissionDenied.into()).to_string();
        assert!(message.contains("permission denied"), "{message}");
        assert!(!message.contains("is it running"), "{message}");
    }
}
