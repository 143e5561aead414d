package main

import (
	"bufio"
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"weave-compute.local/weave/weavetest"
)

// An event stream outlives the server's ReadTimeout (which bounds reading
// a request, not how long a response may stream): it is neither cut nor
// its request context cancelled when the read deadline passes.
func TestEventStreamOutlivesReadTimeout(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{Steps: 150})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	app, err := NewApp(ctx, b.Socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = NewServer(app)
	srv.Config.ReadTimeout = 500 * time.Millisecond
	srv.Start()
	defer srv.Close()
	v := newVisitor(t, srv)
	// 4 images of 150 steps: long enough to still stream after 2 s on a
	// fast machine (one image alone took under 2 s on some).
	long := form("a long one", "150")
	long.Set("batch", "4")
	status, path, page := v.post("/generate", long)
	if status != 200 || !strings.HasPrefix(path, "/jobs/") {
		t.Fatalf("POST /generate gave %d at %s:\n%s", status, path, page)
	}
	resp, err := v.c.Get(srv.URL + path + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	// Proof: an event arrives more than 2 s (4 read timeouts) after the
	// stream opened, on the same response. Reading stops there.
	start := time.Now()
	var last time.Duration
	ended := false
	for !ended && last < 2*time.Second && lines.Scan() {
		if strings.HasPrefix(lines.Text(), "event: ") {
			last = time.Since(start)
		}
		ended = strings.HasPrefix(lines.Text(), "event: end")
	}
	if last >= 2*time.Second {
		return
	}
	if ended {
		t.Fatalf("4 × 150 steps ended within 2 s: the job is too short to show the stream outliving the 500 ms read timeout; make it longer")
	}
	t.Fatalf("the event stream was cut %v after it opened (read timeout 500 ms): %v", last, lines.Err())
}
