package weavetest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var accounts sync.Mutex

// Account is a local user created for a test.
type Account struct {
	Name string
	UID  uint32
	GID  uint32
}

// EnsureUser creates a system user without home or login (useradd), if it
// does not exist yet, makes it a member of groups (usermod -aG: the broker
// reads memberships from the group database) and returns its ids. Needs
// root.
func EnsureUser(t testing.TB, name string, groups ...string) Account {
	t.Helper()
	RequireRoot(t)
	for _, g := range groups {
		EnsureGroup(t, g)
	}
	accounts.Lock()
	defer accounts.Unlock()
	if len(groups) > 0 {
		defer func() {
			if out, err := exec.Command("usermod", "-a", "-G", strings.Join(groups, ","), name).CombinedOutput(); err != nil {
				t.Fatalf("usermod -aG %v %s: %s", groups, name, out)
			}
		}()
	}
	if _, err := user.Lookup(name); err != nil {
		var out []byte
		// /etc/passwd may be locked for a moment by a parallel test run.
		for i := 0; i < 20; i++ {
			out, err = exec.Command("useradd", "--system", "--no-create-home", "--user-group",
				"--shell", "/usr/sbin/nologin", name).CombinedOutput()
			if _, lookErr := user.Lookup(name); err == nil || lookErr == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := user.Lookup(name); err != nil {
			t.Fatalf("useradd %s failed: %s", name, out)
		}
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		t.Fatalf("user %s has ids %s/%s", name, u.Uid, u.Gid)
	}
	return Account{Name: name, UID: uint32(uid), GID: uint32(gid)}
}

// EnsureGroup creates a system group (groupadd) if it does not exist yet
// and returns its gid. Needs root.
func EnsureGroup(t testing.TB, name string) uint32 {
	t.Helper()
	RequireRoot(t)
	accounts.Lock()
	defer accounts.Unlock()
	if _, err := user.LookupGroup(name); err != nil {
		var out []byte
		for i := 0; i < 20; i++ {
			out, err = exec.Command("groupadd", "--system", name).CombinedOutput()
			if _, lookErr := user.LookupGroup(name); err == nil || lookErr == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := user.LookupGroup(name); err != nil {
			t.Fatalf("groupadd %s failed: %s", name, out)
		}
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		t.Fatal(err)
	}
	gid, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		t.Fatalf("group %s has gid %s", name, g.Gid)
	}
	return uint32(gid)
}

// ExecutableCopy copies the running test binary to dir (mode 0755), so
// that a child started as another user can run it: go test keeps its
// binaries in a folder only the caller can read.
func ExecutableCopy(t testing.TB, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("%s/test-helper", dir)
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}
