//! The `start` action: containerd runs it in a new container's bundle directory, waits for it to exit, and
//! connects to the socket address it answers with.
//!
//! It binds that socket itself and hands the listener to the server it spawns (as the server's stdin), as
//! containerd's own runc shim hands its server the socket: it exits at once, without waiting for the server to
//! start, and containerd's first requests wait in the socket's backlog while the server starts, spawns its
//! broker and confines itself. Another container of the same pod finds the socket live and gets its address;
//! no process is spawned for it.
//!
//! No async runtime here: the action writes two small files and exits, and a runtime's blocking threads only
//! delayed its exit, which every container start waits for.

use crate::bootstrap::{self, StartInput};
use crate::server::io_error;
use crate::{broker, bundle, confine, content, node_config};
use containerd_shim::{Error, Flags};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The `start` action, answered in the dialect containerd spoke (see [`bootstrap`]): the bare socket address
/// to 1.6 and 1.7, a `BootstrapResult` for the task API v3 to 2.x's bootstrap protocol.
pub fn run(flags: Flags) -> Result<(), Error> {
    let input = read_start_input();
    let bundle = std::env::current_dir().map_err(io_error("bundle directory"))?;
    // Containers of one pod share a shim process, found by the socket their grouping names.
    let grouping = bundle::grouping_key(&bundle, &flags.id);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &grouping);
    let path = Path::new(address.trim_start_matches("unix://"));
    let server = match bind(path)? {
        Some(listener) => match spawn_server(&flags, &input, &address, listener) {
            Ok(server) => Some(server),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        },
        None => None,
    };
    let answered = write_address_file(&address).and_then(|()| {
        crate::write_stdout(&bootstrap::start_reply(&input, &address), "the start reply")
    });
    if answered.is_err() {
        // containerd will not connect to a shim whose start failed: nothing may be left serving or half-told.
        let _ = std::fs::remove_file("address");
        if let Some(mut server) = server {
            let _ = server.kill();
            let _ = server.wait();
            let _ = std::fs::remove_file(path);
        }
    }
    answered
}

/// What containerd wrote to `start`'s stdin (nothing, when run by hand from a terminal).
fn read_start_input() -> StartInput {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return StartInput::default();
    }
    let mut bytes = Vec::new();
    let _ = stdin.take(1 << 20).read_to_end(&mut bytes);
    StartInput::parse(&bytes)
}

/// Binds the socket, or returns `None` when a live server already owns it (a stale file is replaced).
fn bind(path: &Path) -> Result<Option<UnixListener>, Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error("creating the socket directory"))?;
    }
    match UnixListener::bind(path) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path).map_err(io_error("removing a stale shim socket"))?;
            UnixListener::bind(path)
                .map(Some)
                .map_err(io_error("binding the shim socket"))
        }
        Err(e) => Err(io_error("binding the shim socket")(e)),
    }
}

/// Spawns the long-lived shim server on `listener`, with the node configuration's confinement and image policy
/// (which only this action receives from containerd), its OOM score above containerd's.
fn spawn_server(
    flags: &Flags,
    input: &StartInput,
    socket: &str,
    listener: UnixListener,
) -> Result<Child, Error> {
    // A configuration that does not read gets the default here, and its error from Create.
    let node = node_config::for_create(input.options.as_ref()).unwrap_or_default();
    let config_file = node_config::file_for(input.options.as_ref());
    let files = confine::node_file_rules(&node, config_file.as_deref())
        .map_err(|e| Error::Other(e.to_string()))?;
    let mut command = Command::new(std::env::current_exe().map_err(io_error("this binary"))?);
    command
        .args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address, "-socket", socket])
        .env(confine::SECCOMP_MODE_ENV, node.security.seccomp.name())
        .env(confine::FILE_RULES_ENV, confine::encode(files.as_ref()))
        .env(
            broker::IMAGES_ENV,
            content::ImagePolicy::of(&node).to_string(),
        )
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if flags.debug {
        command.arg("-debug");
    }
    let mut server = command
        .spawn()
        .map_err(io_error("spawning the shim server"))?;
    if let Err(e) = containerd_shim::cgroup::set_cgroup_and_oom_score(server.id(), "") {
        let _ = server.kill();
        let _ = server.wait();
        return Err(e);
    }
    Ok(server)
}

/// The bundle's `address` file, which containerd reads back when it restarts and `delete` reads to find the
/// socket; written whole or not at all.
fn write_address_file(address: &str) -> Result<(), Error> {
    let written =
        std::fs::write(".address", address).and_then(|()| std::fs::rename(".address", "address"));
    if written.is_err() {
        let _ = std::fs::remove_file(".address");
    }
    written.map_err(io_error("writing the address file"))
}

/// Takes the listening socket the `start` action passed as stdin, and points stdin at `/dev/null`.
pub fn inherited_listener() -> Result<UnixListener, Error> {
    use nix::sys::socket::{Backlog, SockType, UnixAddr, getsockname, getsockopt, listen, sockopt};
    use std::os::fd::{AsFd, AsRawFd};
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_error("taking the socket from stdin"))?;
    let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false)
        && getsockopt(&fd, sockopt::SockType).is_ok_and(|t| t == SockType::Stream)
        && getsockname::<UnixAddr>(fd.as_raw_fd()).is_ok();
    if !listening {
        return Err(Error::InvalidArgument(
            "stdin is not a listening unix socket: the shim server is started by the `start` action, \
             which hands it the socket containerd connects to"
                .into(),
        ));
    }
    // A unix socket's peer credentials name the process that last called `listen` on it, and `delete` judges
    // by them whether a live server still holds the socket: they must name this server, not the exited
    // `start` action that bound it.
    listen(&fd, Backlog::MAXCONN)
        .map_err(|e| io_error("listening on the shim socket")(e.into()))?;
    let null = std::fs::File::open("/dev/null").map_err(io_error("opening /dev/null"))?;
    nix::unistd::dup2_stdin(null).map_err(|e| io_error("pointing stdin at /dev/null")(e.into()))?;
    Ok(UnixListener::from(fd))
}
