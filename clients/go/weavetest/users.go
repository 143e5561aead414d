package weavetest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
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
// does not exist yet, and returns its ids. Needs root.
func EnsureUser(t testing.TB, name string) Account {
	t.Helper()
	RequireRoot(t)
	accounts.Lock()
	defer accounts.Unlock()
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
