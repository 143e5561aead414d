package weave

import (
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// Who may be behind the socket. The kernel records the credentials of the
// process that created a listening socket (SO_PEERCRED on the client side
// reports them): a user-mode broker is the caller's own uid; a system-mode
// broker binds as root (or systemd does, with socket activation) and only
// then drops to its service account. The socket's directory is created by
// the broker: owned by the caller (user mode) or the service account
// (system mode), never writable by anyone else, so nobody else can put a
// socket of their own at that path.

// DefaultServiceAccount is the system-mode broker's account ("daemon.user"
// in its config) that Dial trusts in addition to root and the caller.
const DefaultServiceAccount = "weave"

// trustedUIDs is the set the Dialer accepts: its TrustedUIDs, or root, the
// caller's own uid and the service account's uid when it exists.
func (d *Dialer) trustedUIDs() map[uint32]bool {
	trusted := map[uint32]bool{}
	if d.TrustedUIDs != nil {
		for _, uid := range d.TrustedUIDs {
			trusted[uid] = true
		}
		return trusted
	}
	trusted[0] = true
	trusted[uint32(os.Geteuid())] = true
	account := d.ServiceAccount
	if account == "" {
		account = DefaultServiceAccount
	}
	if u, err := user.Lookup(account); err == nil {
		if uid, err := strconv.ParseUint(u.Uid, 10, 32); err == nil {
			trusted[uint32(uid)] = true
		}
	}
	return trusted
}

// checkSocketDir refuses a socket whose directory an untrusted uid owns or
// that group or others may write to.
func checkSocketDir(socket string, trusted map[uint32]bool) error {
	dir := filepath.Dir(socket)
	info, err := os.Stat(dir)
	if os.IsNotExist(err) {
		return fmt.Errorf("there is no broker socket at %s (is the broker running? `weave-broker --user` starts one): %w", socket, err)
	}
	if err != nil {
		return &IdentityError{Socket: socket, Reason: fmt.Sprintf("cannot inspect its directory: %v", err)}
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return &IdentityError{Socket: socket, Reason: "cannot read the owner of its directory on this platform"}
	}
	if !trusted[st.Uid] {
		return &IdentityError{Socket: socket, Reason: fmt.Sprintf(
			"its directory %s is owned by uid %d, which is not the broker's account; "+
				"start the broker yourself or set Dialer.TrustedUIDs/ServiceAccount to the account it runs as", dir, st.Uid)}
	}
	if info.Mode().Perm()&0o022 != 0 {
		return &IdentityError{Socket: socket, Reason: fmt.Sprintf(
			"its directory %s is writable by group or others (mode %04o), so someone else could have replaced the socket; "+
				"the broker creates it 0700 (user mode) or 0750 (system mode): restart the broker or `chmod go-w %s`",
			dir, info.Mode().Perm(), dir)}
	}
	return nil
}

// checkPeer refuses a connection whose listening process was not a
// trusted uid.
func checkPeer(socket string, conn *net.UnixConn, trusted map[uint32]bool) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return &IdentityError{Socket: socket, Reason: fmt.Sprintf("cannot read the peer's credentials: %v", err)}
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		credErr = err
	}
	if credErr != nil {
		return &IdentityError{Socket: socket, Reason: fmt.Sprintf("cannot read the peer's credentials (SO_PEERCRED): %v", credErr)}
	}
	if !trusted[cred.Uid] {
		return &IdentityError{Socket: socket, Reason: fmt.Sprintf(
			"the socket was created by uid %d (pid %d), not by the broker's account; "+
				"another user may be impersonating the broker: check who runs it", cred.Uid, cred.Pid)}
	}
	return nil
}
