//! Start-up, confinement, the serving threads and orderly shutdown.
//!
//! Order matters: config (checked) → audit → socket → privilege drop while
//! still single-threaded → worker supervisors (each forks its spawner) →
//! initialization complete (seccomp) → threads → READY.
#![forbid(unsafe_code)]

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use weave_common::accounts;
use weave_common::proto::Mode;

use crate::audit::{AuditLog, AuditRecord, Severity};
use crate::auth::{AuthError, Authorizer};
use crate::job_runner::JobRunner;
use crate::modes::{self, ModeError, Options, SystemOwnership};
use crate::scheduler::{Broker, PoolWorker};
use crate::server;
use crate::settings::{self, Config, ConfigErrors};
use crate::syscalls;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Mode(#[from] ModeError),
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("cannot confine the broker: {0}")]
    Confine(String),
    #[error("cannot start the worker: {0}")]
    Worker(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Boundary(#[from] crate::boundary::BoundaryError),
}

/// The account that may own the system config besides root.
const SERVICE_ACCOUNT: &str = "weave";

pub fn run(options: &Options) -> Result<(), DaemonError> {
    let euid = syscalls::effective_uid();
    if options.mode == Mode::System && euid != 0 {
        return Err(ModeError::SystemNeedsRoot.into());
    }
    modes::check_user_mode_uid(
        options.mode,
        euid,
        std::env::var_os(modes::ALLOW_ROOT_USER_MODE_ENV).as_deref(),
    )?;
    let config_path = options.config_path()?;
    let trusted_uids = match options.mode {
        Mode::User => vec![euid],
        Mode::System => {
            // Root or the `weave` service account, never a name taken from
            // the file being checked.
            let mut uids = vec![0];
            if let Ok(Some(user)) = accounts::user_by_name(SERVICE_ACCOUNT) {
                uids.push(user.uid);
            }
            uids
        }
    };
    let settings = settings::load(&config_path, options.mode, &trusted_uids)?;
    let audit = Arc::new(AuditLog::new(
        settings.audit.sink.clone(),
        settings::syslog_facility(settings.audit.facility),
        settings.audit.log_prompts,
    ));

    let authorizer = match options.mode {
        Mode::User => Authorizer::user_mode(euid),
        Mode::System => Authorizer::system_mode(
            settings.daemon.client_group.as_deref().unwrap_or_default(),
            settings.daemon.admin_group.as_deref().unwrap_or_default(),
        )?,
    };

    // SIGTERM and SIGINT are caught before the socket exists: a client (or
    // systemd) that sees the socket may stop the broker at once, and the
    // default action would kill it without removing the socket. Registering
    // starts no thread; the signals are read once serving begins.
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(DaemonError::Signals)?;

    // The socket: from systemd (which owns it), or bound here (and removed
    // at shutdown if it is still ours).
    let (listener, owned_socket) = match modes::activated_listener()? {
        Some(listener) => (listener, None),
        None => {
            let socket_path = options.socket_path(settings.daemon.socket.as_deref())?;
            let system = match options.mode {
                Mode::User => None,
                Mode::System => Some(system_ownership(&settings)?),
            };
            let listener = modes::bind_socket(&socket_path, system)?;
            let inode = std::fs::symlink_metadata(&socket_path)
                .ok()
                .map(|meta| meta.ino());
            (listener, Some((socket_path, inode)))
        }
    };

    // Confinement, while still single-threaded.
    match options.mode {
        Mode::System => {
            weave_policy::broker::drop_privileges(settings.daemon_user())
                .map_err(|error| DaemonError::Confine(error.to_string()))?;
        }
        Mode::User => {
            weave_policy::broker::harden()
                .map_err(|error| DaemonError::Confine(error.to_string()))?;
        }
    }

    let pool = crate::worker_setup::start_pool(&settings)
        .map_err(|error| DaemonError::Worker(error.to_string()))?;
    let workers = pool
        .iter()
        .map(|(device, supervisor)| PoolWorker {
            device: *device,
            handle: supervisor.handle(),
        })
        .collect();
    let runners: Vec<Box<dyn JobRunner>> = pool
        .into_iter()
        .map(|(_, supervisor)| Box::new(supervisor) as Box<dyn JobRunner>)
        .collect();
    let broker = Broker::new(settings, options.mode, Arc::clone(&audit), workers);
    audit.record(
        Severity::Notice,
        &AuditRecord::new("start")
            .field("mode", format!("{:?}", options.mode).to_lowercase())
            .field("uid", syscalls::effective_uid()),
    );

    // Initialization complete: the socket is bound, privileges are dropped
    // and the spawner is forked (by the supervisor); from here on the
    // broker's seccomp allowlist holds on every thread.
    crate::boundary::initialization_complete()?;

    let scheduler = {
        let broker = Arc::clone(&broker);
        std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || broker.run_scheduler(runners))
            .map_err(DaemonError::Thread)?
    };

    let listener_fd = listener.as_raw_fd();
    {
        let broker = Arc::clone(&broker);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    eprintln!("weave-broker: signal {signal}, shutting down");
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
                    broker.begin_shutdown();
                    let _ = syscalls::shutdown_listener(listener_fd);
                }
            })
            .map_err(DaemonError::Thread)?;
    }

    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving"),
        ],
    );
    eprintln!(
        "weave-broker: {} mode, listening on {}",
        format!("{:?}", options.mode).to_lowercase(),
        owned_socket.as_ref().map_or_else(
            || "the socket systemd passed".to_owned(),
            |(path, _)| path.display().to_string()
        )
    );

    server::serve(&listener, &broker, &Arc::new(authorizer));

    // Shutdown: queued jobs were failed by begin_shutdown; the scheduler
    // stops the worker on its way out.
    let _ = scheduler.join();
    // Let streaming connections deliver their final event (ShuttingDown).
    broker.wait_streams(Duration::from_secs(2));
    if let Some((path, inode)) = &owned_socket {
        modes::remove_socket(path, *inode);
    }
    audit.record(Severity::Notice, &AuditRecord::new("stop"));
    Ok(())
}

fn system_ownership(settings: &Config) -> Result<SystemOwnership, DaemonError> {
    let user_name = settings.daemon_user();
    let user = accounts::user_by_name(user_name)
        .ok()
        .flatten()
        .ok_or_else(|| ModeError::NoSuchUser(user_name.to_owned()))?;
    let group = settings.daemon.client_group.clone().unwrap_or_default();
    let client_gid = accounts::group_id_by_name(&group)
        .ok()
        .flatten()
        .ok_or(ModeError::NoSuchGroup(group))?;
    Ok(SystemOwnership {
        service_uid: user.uid,
        client_gid,
    })
}
