package weave

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"weave-compute.local/weave/weavetest"
)

// A copy of the test binary runs as another user in one of these roles
// (WEAVE_GO_HELPER): "dial" connects and prints the outcome, "listen"
// impersonates a broker on a socket.
func TestMain(m *testing.M) {
	switch os.Getenv("WEAVE_GO_HELPER") {
	case "dial":
		helperDial(os.Getenv("WEAVE_GO_SOCKET"))
	case "listen":
		helperListen(os.Getenv("WEAVE_GO_SOCKET"))
	case "system-client":
		helperSystemClient(os.Getenv("WEAVE_GO_SOCKET"), os.Getenv("WEAVE_GO_SERVICE"))
	default:
		os.Exit(m.Run())
	}
}

func helperDial(socket string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, socket)
	var refused *RefusedError
	switch {
	case err == nil:
		fmt.Printf("connected as %v\n", c.Info().Role)
	case errors.As(err, &refused):
		fmt.Printf("refused: %v\n", err)
	default:
		fmt.Printf("other error: %v\n", err)
	}
	os.Exit(0)
}

// helperSystemClient is a web app's uid in system mode: a member of the
// client group. It prints one line per check.
func helperSystemClient(socket, service string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var idErr *IdentityError
	if _, err := Dial(ctx, socket); errors.As(err, &idErr) {
		fmt.Println("default dialer: identity error:", idErr.Reason)
	} else {
		fmt.Println("default dialer:", err)
	}
	c, err := (&Dialer{ServiceAccount: service}).Dial(ctx, socket)
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(0)
	}
	fmt.Printf("role %v mode %v\n", c.Info().Role, c.Info().Mode)
	var np *NotPermittedError
	err = c.Drain(ctx)
	fmt.Printf("drain: not permitted %v verb %s\n", errors.As(err, &np), func() string {
		if np != nil {
			return np.Verb
		}
		return fmt.Sprint(err)
	}())
	if st, err := c.Status(ctx); err == nil {
		fmt.Printf("status after drain: ok, %v\n", st.Mode)
	} else {
		fmt.Println("status after drain:", err)
	}
	g, err := c.Generate(ctx, GenerateRequest{ModelID: "digits", Prompt: "a 1", Seed: Ptr[uint64](1), Batch: 1, Tag: Ptr("member")})
	if err != nil {
		fmt.Println("generate:", err)
		os.Exit(0)
	}
	images, err := g.Images(nil)
	if err != nil || len(images) != 1 {
		fmt.Println("generate:", err)
		os.Exit(0)
	}
	fmt.Printf("image %dx%d\n", images[0].Width, images[0].Height)
	os.Exit(0)
}

func helperListen(socket string) {
	l, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	fmt.Println("listening")
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(0)
		}
		c.Close()
	}
}

// asUser starts the test binary's copy in dir as account (with only the
// supplementary groups given), in helper role.
func asUser(t *testing.T, dir string, account weavetest.Account, role, socket string, groups ...uint32) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(weavetest.ExecutableCopy(t, dir))
	cmd.Env = []string{"WEAVE_GO_HELPER=" + role, "WEAVE_GO_SOCKET=" + socket, "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: account.UID, Gid: account.GID, Groups: append([]uint32{}, groups...)}}
	return cmd
}

// The seeds' deployment: a system-mode broker (binds as root, drops to its
// service account) and a web app running as a member of client_group.
func TestSystemModeClientGroupMember(t *testing.T) {
	sys := &weavetest.SystemAccounts{Service: "weave-go-svc", ClientGroup: "weave-go-clients", AdminGroup: "weave-go-admins"}
	b := weavetest.Start(t, weavetest.Config{Steps: 2, System: sys})
	member := weavetest.EnsureUser(t, "weave-go-member", sys.ClientGroup)
	clients := weavetest.EnsureGroup(t, sys.ClientGroup)
	service := weavetest.EnsureUser(t, sys.Service)
	cmd := asUser(t, b.Dir, member, "system-client", b.Socket, clients)
	cmd.Env = append(cmd.Env, "WEAVE_GO_SERVICE="+sys.Service)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	// The socket folder belongs to the service account, which the
	// default Dialer does not know (it trusts "weave").
	want := []string{
		fmt.Sprintf("default dialer: identity error: its directory %s is owned by uid %d", filepath.Dir(b.Socket), service.UID),
		"role client mode system",
		"drain: not permitted true verb drain",
		"status after drain: ok, system",
		"image 32x32",
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(want) {
		t.Fatalf("helper printed:\n%s", out)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Fatalf("line %d: %q, want %q\nall:\n%s", i, lines[i], w, out)
		}
	}
	// Root is admin of a system-mode broker; the member's job carried its tag.
	c, err := (&Dialer{ServiceAccount: sys.Service}).Dial(context.Background(), b.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Info().Role != RoleAdmin || c.Info().Mode != ModeSystem {
		t.Fatalf("root: %+v", c.Info())
	}
	if _, ok := b.WaitAudit(5*time.Second, "event=job", fmt.Sprintf("uid=%d", member.UID), "tag=member", "outcome=finished"); !ok {
		t.Fatalf("no job record for the member: %v", b.AuditRecords())
	}
}

func TestAnotherUIDIsRefusedWithoutAByte(t *testing.T) {
	outsider := weavetest.EnsureUser(t, "weave-go-outsider")
	b := weavetest.Start(t, weavetest.Config{})
	// Open the socket up, as a careless admin might: the broker itself
	// still refuses the uid (SO_PEERCRED), the client reports it in words.
	runDir := filepath.Dir(b.Socket)
	if err := os.Chmod(runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(b.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	out, err := asUser(t, b.Dir, outsider, "dial", b.Socket).CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	if !strings.HasPrefix(string(out), "refused: ") || !strings.Contains(string(out), "not permitted") {
		t.Fatalf("the outsider's Dial: %s", out)
	}
	if _, ok := b.WaitAudit(5*time.Second, "event=connection_rejected", fmt.Sprintf("uid=%d", outsider.UID)); !ok {
		t.Fatalf("no connection_rejected record for uid %d: %v", outsider.UID, b.AuditRecords())
	}
	// Root, the broker's own uid, is still served.
	dial(t, b)
}

func TestIdentityChecksRefuseImpostors(t *testing.T) {
	outsider := weavetest.EnsureUser(t, "weave-go-outsider")
	b := weavetest.Start(t, weavetest.Config{})
	runDir := filepath.Dir(b.Socket)
	var idErr *IdentityError

	// A socket folder others may write to: someone could have swapped
	// the socket. Nothing is sent.
	if err := os.Chmod(runDir, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err := Dial(context.Background(), b.Socket)
	if !errors.As(err, &idErr) || !strings.Contains(idErr.Reason, "writable by group or others") {
		t.Fatalf("world-writable socket folder: %v", err)
	}
	if err := os.Chmod(runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A folder owned by someone the client does not trust.
	if err := os.Chown(runDir, int(outsider.UID), int(outsider.GID)); err != nil {
		t.Fatal(err)
	}
	_, err = Dial(context.Background(), b.Socket)
	if !errors.As(err, &idErr) || !strings.Contains(idErr.Reason, fmt.Sprintf("owned by uid %d", outsider.UID)) {
		t.Fatalf("foreign socket folder: %v", err)
	}
	if err := os.Chown(runDir, 0, 0); err != nil {
		t.Fatal(err)
	}
	dial(t, b)

	// An impostor: another uid listens on a socket whose folder looks
	// right (root-owned, 0755 once it has bound). SO_PEERCRED names it.
	fake := filepath.Join(b.Dir, "fake")
	if err := os.Mkdir(fake, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(fake, int(outsider.UID), int(outsider.GID)); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(fake, "weave.sock")
	cmd := asUser(t, b.Dir, outsider, "listen", socket)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	line := make([]byte, 10)
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "listening\n" {
		t.Fatalf("impostor did not start: %q %v", line, err)
	}
	if err := os.Chown(fake, 0, 0); err != nil {
		t.Fatal(err)
	}
	_, err = Dial(context.Background(), socket)
	if !errors.As(err, &idErr) || !strings.Contains(idErr.Reason, fmt.Sprintf("created by uid %d", outsider.UID)) {
		t.Fatalf("impostor broker: %v", err)
	}
	// Trusting that uid explicitly lets the client through to the
	// impostor, which closes without a byte: the check is what stopped it.
	_, err = (&Dialer{TrustedUIDs: []uint32{0, outsider.UID}}).Dial(context.Background(), socket)
	var refused *RefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("impostor with its uid trusted: %v", err)
	}
}

// docs/PROTOCOL.md: after an oversized frame the broker answers
// ProtocolError and closes without reading the body; the answer can still
// be read after the write failed.
func TestErrorIsReadableAfterAnOversizedWrite(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{})
	conn, err := net.Dial("unix", b.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hello, _ := frameRequest(&request{kind: reqHello, version: ProtocolVersion, clientName: "raw"})
	if _, err := conn.Write(hello); err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if body, err := readFrame(conn, DefaultMaxResponseFrame); err != nil || body[0] != byte(respHello) {
		t.Fatalf("hello: % x %v", body, err)
	}
	frame := binary.LittleEndian.AppendUint32(nil, MaxRequestFrame+1)
	frame = append(frame, make([]byte, 4<<20)...)
	_, writeErr := conn.Write(frame) // may fail with EPIPE/ECONNRESET
	body, err := readFrame(conn, DefaultMaxResponseFrame)
	if err != nil {
		t.Fatalf("reading after the write (write: %v): %v", writeErr, err)
	}
	r, err := decodeResponse(body)
	var pe *ProtocolError
	if err != nil || !errors.As(r.err, &pe) || !strings.Contains(pe.Reason, "65536") {
		t.Fatalf("answer to the oversized frame: %+v %v", r, err)
	}
	t.Logf("write error: %v; answer: %v", writeErr, pe.Reason)
	if _, err := readFrame(conn, DefaultMaxResponseFrame); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after the error the broker should close: %v", err)
	}
}

// docs/PROTOCOL.md: a permitted caller over a connection limit is told so
// (Busy instead of the Hello answer), unlike a caller that is not
// permitted (closed without a byte).
func TestConnectionLimitIsBusyNotRefused(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{
		Limits: "max_connections = 2\nadmin_reserved_connections = 1\nmax_connections_per_uid = 1"})
	first, second := dial(t, b), dial(t, b)
	_, err := Dial(context.Background(), b.Socket)
	var busy *BusyError
	if !errors.As(err, &busy) || busy.RetryAfter() <= 0 {
		t.Fatalf("third connection: %v, want BusyError", err)
	}
	second.Close()
	// The broker frees the place when it notices the close.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err := Dial(context.Background(), b.Socket)
		if err == nil {
			c.Close()
			break
		}
		if !errors.As(err, &busy) || time.Now().After(end) {
			t.Fatalf("after a close: %v", err)
		}
	}
	if _, err := first.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
}
