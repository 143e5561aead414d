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
	_, path, _ := v.post("/generate", form("a long one", "150"))
	resp, err := v.c.Get(srv.URL + path + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	start := time.Now()
	var lastProgress time.Duration
	ended := false
	for lines.Scan() && time.Since(start) < 3*time.Second {
		switch {
		case strings.HasPrefix(lines.Text(), "event: progress"):
			lastProgress = time.Since(start)
		case strings.HasPrefix(lines.Text(), "event: end"):
			ended = true
		}
	}
	if ended && lastProgress < 2*time.Second {
		t.Skip("150 steps finished within 2 s on this machine: nothing to show")
	}
	if lastProgress < 2*time.Second {
		t.Fatalf("the event stream stopped delivering after %v (read timeout 500 ms): %v", lastProgress, lines.Err())
	}
}
