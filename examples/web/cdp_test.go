package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// A minimal Chrome DevTools Protocol client over --remote-debugging-pipe:
// Chromium reads commands from fd 3 and writes replies and events to fd 4,
// each a JSON object followed by a NUL byte. No websocket, no library.

type cdpMessage struct {
	ID        int             `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

type browser struct {
	t        *testing.T
	cmd      *exec.Cmd
	toChrome *os.File
	mu       sync.Mutex
	nextID   int
	waiting  map[int]chan cdpMessage
	events   []cdpMessage
	session  string
}

// chromiumFlags: headless, and quiet on a machine without a network (the
// background services would otherwise retry refused connections).
var chromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--disable-quic", "--disable-dev-shm-usage", "--remote-debugging-pipe",
}

func startBrowser(t *testing.T) *browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed (scripts/deps.sh installs Debian's chromium): %v", err)
	}
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	profile := t.TempDir()
	cmd := exec.Command(path, append(chromiumFlags, "--user-data-dir="+profile, "about:blank")...)
	cmd.ExtraFiles = []*os.File{cmdR, outW} // fd 3, fd 4
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmdR.Close()
	outW.Close()
	b := &browser{t: t, cmd: cmd, toChrome: cmdW, waiting: map[int]chan cdpMessage{}}
	t.Cleanup(func() {
		cmdW.Close()
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("chromium stderr (tail): %s", tail(stderr.String(), 3000))
		}
	})
	go b.read(bufio.NewReader(outR))
	// Attach to the first page target; commands with its sessionId go to it.
	var targets struct {
		TargetInfos []struct{ TargetID, Type string } `json:"targetInfos"`
	}
	b.call("", "Target.getTargets", nil, &targets)
	for _, ti := range targets.TargetInfos {
		if ti.Type == "page" {
			var attached struct{ SessionID string }
			b.call("", "Target.attachToTarget", map[string]any{"targetId": ti.TargetID, "flatten": true}, &attached)
			b.session = attached.SessionID
			break
		}
	}
	if b.session == "" {
		t.Fatalf("no page target in %+v", targets)
	}
	b.call(b.session, "Page.enable", nil, nil)
	b.call(b.session, "Runtime.enable", nil, nil)
	return b
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (b *browser) read(r *bufio.Reader) {
	for {
		raw, err := r.ReadBytes(0)
		if err != nil {
			return
		}
		var m cdpMessage
		if json.Unmarshal(raw[:len(raw)-1], &m) != nil {
			continue
		}
		b.mu.Lock()
		if m.ID != 0 {
			if ch, ok := b.waiting[m.ID]; ok {
				ch <- m
				delete(b.waiting, m.ID)
			}
		} else if len(b.events) < 10000 {
			b.events = append(b.events, m)
		}
		b.mu.Unlock()
	}
}

// call sends one command and decodes its result into out.
func (b *browser) call(session, method string, params any, out any) {
	b.t.Helper()
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan cdpMessage, 1)
	b.waiting[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	data, _ := json.Marshal(msg)
	if _, err := b.toChrome.Write(append(data, 0)); err != nil {
		b.t.Fatalf("%s: %v", method, err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			b.t.Fatalf("%s: %s", method, m.Error.Message)
		}
		if out != nil {
			if err := json.Unmarshal(m.Result, out); err != nil {
				b.t.Fatalf("%s: %v in %s", method, err, m.Result)
			}
		}
	case <-time.After(30 * time.Second):
		b.t.Fatalf("%s: no answer from chromium in 30 s", method)
	}
}

// waitEvent waits for an event of the page session after index from.
func (b *browser) waitEvent(method string, from int, timeout time.Duration) {
	b.t.Helper()
	end := time.Now().Add(timeout)
	for time.Now().Before(end) {
		b.mu.Lock()
		for _, e := range b.events[from:] {
			if e.Method == method && e.SessionID == b.session {
				b.mu.Unlock()
				return
			}
		}
		b.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	b.t.Fatalf("no %s event in %v", method, timeout)
}

func (b *browser) eventCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.events)
}

// navigate loads url and waits for its load event.
func (b *browser) navigate(url string) {
	b.t.Helper()
	from := b.eventCount()
	b.call(b.session, "Page.navigate", map[string]any{"url": url}, nil)
	b.waitEvent("Page.loadEventFired", from, 30*time.Second)
}

// eval runs a JavaScript expression in the page and decodes its value.
func (b *browser) eval(expr string, out any) {
	b.t.Helper()
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	b.call(b.session, "Runtime.evaluate", map[string]any{
		"expression": expr, "returnByValue": true, "awaitPromise": true,
	}, &res)
	if res.ExceptionDetails != nil {
		b.t.Fatalf("%s: %s", expr, res.ExceptionDetails.Text)
	}
	if out != nil && len(res.Result.Value) > 0 {
		if err := json.Unmarshal(res.Result.Value, out); err != nil {
			b.t.Fatalf("%s: %v in %s", expr, err, res.Result.Value)
		}
	}
}

// typeInto focuses the element with this id, clears it and types text
// as keyboard input.
func (b *browser) typeInto(id, text string) {
	b.t.Helper()
	b.eval(fmt.Sprintf(`(() => { const e = document.getElementById(%q); e.focus(); e.select(); return true })()`, id), nil)
	b.call(b.session, "Input.insertText", map[string]any{"text": text}, nil)
}

// click presses and releases the left mouse button on the element's centre.
func (b *browser) click(id string) {
	b.t.Helper()
	var box struct{ X, Y float64 }
	b.eval(fmt.Sprintf(`(() => { const r = document.getElementById(%q).getBoundingClientRect();
		return {x: r.x + r.width / 2, y: r.y + r.height / 2} })()`, id), &box)
	for _, kind := range []string{"mousePressed", "mouseReleased"} {
		b.call(b.session, "Input.dispatchMouseEvent", map[string]any{
			"type": kind, "x": box.X, "y": box.Y, "button": "left", "clickCount": 1,
		}, nil)
	}
}

// waitFor polls a JavaScript expression until it returns a non-null value.
func (b *browser) waitFor(expr string, timeout time.Duration, out any) {
	b.t.Helper()
	end := time.Now().Add(timeout)
	for {
		var raw json.RawMessage
		b.eval(expr, &raw)
		if len(raw) > 0 && string(raw) != "null" {
			if err := json.Unmarshal(raw, out); err != nil {
				b.t.Fatal(err)
			}
			return
		}
		if time.Now().After(end) {
			var page string
			b.eval(`document.body.innerText`, &page)
			b.t.Fatalf("%s stayed null for %v; the page says: %s", expr, timeout, page)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
