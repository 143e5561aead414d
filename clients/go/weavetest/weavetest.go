// Package weavetest starts real weave-broker processes (with their real,
// sandboxed weave-worker) for the tests of the Go client and of programs
// that use it, like net/http/httptest does for HTTP servers. It needs the
// release binaries (cargo build --release --bins) and models/digits.
package weavetest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// InCI reports whether the run is CI (CI=true), where a missing binary,
// model or privilege fails a test instead of skipping it.
func InCI() bool {
	v := os.Getenv("CI")
	return v == "true" || v == "1"
}

// RequireRoot fails (CI) or skips the test when not running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatal("this test needs root (it creates users); CI runs as root")
	}
	t.Skip("needs root to create users")
}

// RepoRoot is the weave-compute checkout this package lives in.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "Cargo.toml")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "clients/go")); err == nil {
				return d
			}
		}
		if d == filepath.Dir(d) {
			t.Fatalf("no weave-compute checkout above %s", dir)
		}
	}
}

// BinDir holds weave-broker and weave-worker: $WEAVE_BIN_DIR, else the
// checkout's target/release.
func BinDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("WEAVE_BIN_DIR")
	if dir == "" {
		dir = filepath.Join(RepoRoot(t), "target/release")
	}
	for _, name := range []string{"weave-broker", "weave-worker"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			msg := fmt.Sprintf("%s/%s is missing: run `cargo build --release --bins` first (or set WEAVE_BIN_DIR)", dir, name)
			if InCI() {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return dir
}

// DigitsModel is the absolute path of models/digits (32×32 demo model).
func DigitsModel(t testing.TB) string {
	t.Helper()
	path := filepath.Join(RepoRoot(t), "models/digits")
	if _, err := os.Stat(filepath.Join(path, "model_index.json")); err != nil {
		if InCI() {
			t.Fatalf("models/digits is missing: %v", err)
		}
		t.Skip("models/digits is not in the tree")
	}
	return path
}

// DigitsBoldLora is the absolute path of the project's LoRA for the digits
// model (models/loras/digits-bold.safetensors: heavier strokes).
func DigitsBoldLora(t testing.TB) string {
	t.Helper()
	path := filepath.Join(RepoRoot(t), "models/loras/digits-bold.safetensors")
	if _, err := os.Stat(path); err != nil {
		if InCI() {
			t.Fatalf("the digits-bold LoRA is missing: %v", err)
		}
		t.Skip("models/loras/digits-bold.safetensors is not in the tree")
	}
	return path
}

// Config describes the test broker's weave.toml.
type Config struct {
	// Limits are extra lines for [limits], e.g. "rate_burst = 2".
	Limits string
	// Steps is the digits model's default step count (0: 10).
	Steps int
	// Worker are extra lines for [worker] (which sets device = "cpu"),
	// e.g. "count = 2\ntorch_threads = 1" for a pool of two workers.
	Worker string
	// Sections are extra top-level tables appended after the digits model,
	// e.g. a [[lora]] for it (see DigitsBoldLora).
	Sections string
	// System, when set, starts a system-mode broker instead (needs root):
	// it binds as root, then drops to System.Service.
	System *SystemAccounts
}

// SystemAccounts are the names a system-mode broker's config gives:
// daemon.user, daemon.client_group and daemon.admin_group. StartSystem
// creates them.
type SystemAccounts struct {
	Service, ClientGroup, AdminGroup string
}

// Broker is a running user-mode weave-broker serving models/digits as
// model id "digits" (32×32 by default).
type Broker struct {
	Socket string
	Dir    string // scratch folder: config, log, socket folder
	Log    string
	cmd    *exec.Cmd
	audit  *auditSink
	done   chan struct{}
}

// Start starts a user-mode broker (the caller's uid is its admin), or a
// system-mode one when cfg.System is set, and waits until its socket
// accepts connections. It is stopped with SIGTERM when the test ends.
func Start(t testing.TB, cfg Config) *Broker {
	t.Helper()
	daemon := ""
	mode := "--user"
	if sys := cfg.System; sys != nil {
		EnsureUser(t, sys.Service)
		EnsureGroup(t, sys.ClientGroup)
		EnsureGroup(t, sys.AdminGroup)
		daemon = fmt.Sprintf("user = %q\nclient_group = %q\nadmin_group = %q\n", sys.Service, sys.ClientGroup, sys.AdminGroup)
		mode = "--system"
	}
	bin := BinDir(t)
	model := DigitsModel(t)
	// A short path: sun_path holds 107 bytes. 0755 so that other users
	// can be let in by tests that open the socket up.
	dir, err := os.MkdirTemp("", "weave-go-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b := &Broker{Dir: dir, Socket: filepath.Join(dir, "run/weave.sock"), Log: filepath.Join(dir, "broker.log"), done: make(chan struct{})}
	b.audit, err = listenAudit(filepath.Join(dir, "audit.sock"))
	if err != nil {
		t.Fatal(err)
	}
	steps := cfg.Steps
	if steps == 0 {
		steps = 10
	}
	config := fmt.Sprintf(`[daemon]
%s
[limits]
%s
[audit]
sink = %q

[worker]
device = "cpu"
%s

[[model]]
id = "digits"
kind = "sd1"
path = %q

[model.defaults]
width = 32
height = 32
steps = %d
guidance = 5.0
scheduler = "ddim"

%s
`, daemon, cfg.Limits, b.audit.path, cfg.Worker, model, steps, cfg.Sections)
	configPath := filepath.Join(dir, "weave.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(b.Log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	b.cmd = exec.Command(filepath.Join(bin, "weave-broker"), mode, "--config", configPath, "--socket", b.Socket)
	// The tests run as root in CI; a user-mode broker refuses root unless
	// this documented escape hatch is set (docs/BROKER.md).
	b.cmd.Env = append(os.Environ(), "WEAVE_ALLOW_ROOT_USER_MODE=1")
	b.cmd.Stdout = logFile
	b.cmd.Stderr = logFile
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() { b.stop(t) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-b.done:
			t.Fatalf("weave-broker exited early: %s", b.LogText())
		default:
		}
		if c, err := net.Dial("unix", b.Socket); err == nil {
			c.Close()
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("the broker's socket never came up: %s", b.LogText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// LogText is the broker's stdout and stderr so far.
func (b *Broker) LogText() string {
	text, _ := os.ReadFile(b.Log)
	return string(text)
}

// Pid is the broker's process id.
func (b *Broker) Pid() int { return b.cmd.Process.Pid }

// AuditRecords are the audit lines the broker sent so far.
func (b *Broker) AuditRecords() []string { return b.audit.records() }

// WaitAudit waits up to timeout for an audit record containing every needle.
func (b *Broker) WaitAudit(timeout time.Duration, needles ...string) (string, bool) {
	end := time.Now().Add(timeout)
	for {
		for _, r := range b.audit.records() {
			all := true
			for _, n := range needles {
				all = all && strings.Contains(r, n)
			}
			if all {
				return r, true
			}
		}
		if time.Now().After(end) {
			return "", false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *Broker) stop(t testing.TB) {
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(20 * time.Second):
		b.cmd.Process.Kill()
		<-b.done
		t.Errorf("the broker ignored SIGTERM: %s", b.LogText())
	}
	b.audit.close()
	if t.Failed() {
		t.Logf("broker log:\n%s", b.LogText())
	}
	if os.Getenv("WEAVE_KEEP_SCRATCH") == "" {
		os.RemoveAll(b.Dir)
	}
}

// auditSink is a syslog stand-in: the datagram socket the broker's audit
// records arrive at.
type auditSink struct {
	path string
	conn *net.UnixConn
	mu   sync.Mutex
	seen []string
}

func listenAudit(path string) (*auditSink, error) {
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	// A system-mode broker writes here after dropping to its account.
	if err := os.Chmod(path, 0o666); err != nil {
		conn.Close()
		return nil, err
	}
	s := &auditSink{path: path, conn: conn}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.seen = append(s.seen, string(buf[:n]))
			s.mu.Unlock()
		}
	}()
	return s, nil
}

func (s *auditSink) records() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

func (s *auditSink) close() { s.conn.Close() }
