package weave

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
)

// A Client over one end of a socketpair, and a scripted broker on the other:
// unit tests of what the client does with bytes no real broker sends.
func pairClient(t *testing.T) (*Client, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	mine, peer := conn(fds[0]).(*net.UnixConn), conn(fds[1])
	t.Cleanup(func() { mine.Close(); peer.Close() })
	return &Client{conn: mine, r: bufio.NewReader(mine), max: 1024, turn: make(chan struct{}, 1)}, peer
}

// answer reads one request frame on peer and writes raw bytes back.
func answer(t *testing.T, peer net.Conn, raw ...[]byte) {
	t.Helper()
	go func() {
		if _, err := readFrame(peer, MaxRequestFrame); err != nil {
			return
		}
		for _, b := range raw {
			peer.Write(b)
		}
	}()
}

func TestMalformedResponsesCloseTheClient(t *testing.T) {
	for name, raw := range map[string][]byte{
		"trailing byte":   {2, 0, 0, 0, 0x0b, 0x00},
		"unknown variant": {1, 0, 0, 0, 0x0d},
		"over the limit":  {0x01, 0x04, 0, 0}, // 1025 > 1024
		"wrong kind":      {1, 0, 0, 0, 0x0b}, // Ok to Status
		"truncated":       {9, 0, 0, 0, 0x02},
		"cut varint":      {4, 0, 0, 0, 0x02, 0x00, 0x00, 0x80}, // cut varint inside Status
	} {
		t.Run(name, func(t *testing.T) {
			c, peer := pairClient(t)
			go func() {
				if _, err := readFrame(peer, MaxRequestFrame); err == nil {
					peer.Write(raw)
					peer.(*net.UnixConn).CloseWrite() // the broker goes away mid-frame
				}
			}()
			_, err := c.Status(context.Background())
			var de *DecodeError
			var big *FrameTooLargeError
			var tr *TruncatedError
			if !errors.As(err, &de) && !errors.As(err, &big) && !errors.As(err, &tr) {
				t.Fatalf("got %v", err)
			}
			if _, err := c.Status(context.Background()); !errors.Is(err, ErrClosed) {
				t.Fatalf("after a malformed response: %v, want ErrClosed", err)
			}
		})
	}
}

func TestStreamOrderIsChecked(t *testing.T) {
	queued := frameResponse(&response{kind: respQueued, event: &Queued{JobID: 5}})
	other := frameResponse(&response{kind: respProgress, event: &Progress{JobID: 6, Step: 1, Total: 2}})
	c, peer := pairClient(t)
	answer(t, peer, queued, other)
	g, err := c.Generate(context.Background(), GenerateRequest{ModelID: "m", Batch: 1})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := g.Next(); err != nil || ev.(*Queued).JobID != 5 {
		t.Fatalf("first event: %v %v", ev, err)
	}
	var de *DecodeError
	if _, err := g.Next(); !errors.As(err, &de) {
		t.Fatalf("event of another job: %v", err)
	}
	if _, err := g.Next(); !errors.As(err, &de) {
		t.Fatalf("the stream's error should stick: %v", err)
	}
}

func TestTypedErrorKeepsTheConnection(t *testing.T) {
	c, peer := pairClient(t)
	answer(t, peer, frameResponse(&response{kind: respError, err: &BusyError{RetryAfterMs: 10}}))
	var busy *BusyError
	if _, err := c.Generate(context.Background(), GenerateRequest{ModelID: "m", Batch: 1}); !errors.As(err, &busy) {
		t.Fatal(err)
	}
	answer(t, peer, frameResponse(&response{kind: respOK}))
	if err := c.Drain(context.Background()); err != nil {
		t.Fatalf("after a typed error the connection stays usable: %v", err)
	}
	// A ProtocolError is followed by the broker's close: so is the client.
	answer(t, peer, frameResponse(&response{kind: respError, err: &ProtocolError{Reason: "x"}}))
	var pe *ProtocolError
	if err := c.Resume(context.Background()); !errors.As(err, &pe) {
		t.Fatal(err)
	}
	if err := c.Resume(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("after ProtocolError: %v", err)
	}
}
