package weave

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func decodeErr(t *testing.T, body []byte, want string) {
	t.Helper()
	_, err := decodeResponse(body)
	var de *DecodeError
	if !errors.As(err, &de) {
		t.Fatalf("% x: want a DecodeError containing %q, got %v", body, want, err)
	}
	if !strings.Contains(de.Reason, want) {
		t.Fatalf("% x: reason %q does not contain %q", body, de.Reason, want)
	}
}

func TestStrictDecoding(t *testing.T) {
	cases := []struct {
		name string
		body []byte
		want string
	}{
		{"over-long zero", []byte{0x08, 0x80, 0x00}, "over-long"},
		{"over-long variant", []byte{0x88, 0x00, 0x07}, "over-long"},
		{"u32 over range", []byte{0x06, 0x01, 0x01, 0x80, 0x80, 0x80, 0x80, 0x10}, "out of range"},
		{"u32 too many bytes", []byte{0x06, 0x01, 0x01, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, "longer than 5"},
		{"u16 over range", []byte{0x00, 0x80, 0x80, 0x04, 0x00, 0x00, 0x00}, "out of range"},
		{"u64 bit 64", append([]byte{0x08}, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02), "fit in 64 bits"},
		{"truncated varint", []byte{0x08, 0x80}, "past the end"},
		{"bool 2", []byte{0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02}, "bool"},
		{"option tag 2", []byte{0x02, 0x00, 0x00, 0x00, 0x02}, "Option tag"},
		{"bad utf-8", []byte{0x00, 0x01, 0x02, 0xc3, 0x28, 0x00, 0x00}, "UTF-8"},
		{"trailing byte", []byte{0x0b, 0x00}, "follow the end"},
		{"unknown response", []byte{0x0e}, "unknown variant 14"},
		{"unknown error code", []byte{0x0c, 0x0d}, "unknown variant 13"},
		{"unknown role", []byte{0x00, 0x01, 0x00, 0x02, 0x00}, "role: unknown variant 2"},
		{"length past end", []byte{0x07, 0x07, 0x00, 0x00, 0x01, 0x01, 0x10, 0x89}, "exceeds"},
		{"huge count", []byte{0x09, 0xff, 0xff, 0xff, 0xff, 0x0f}, "exceeds"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { decodeErr(t, c.body, c.want) })
	}
}

func TestLargestValuesRoundTrip(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 16383, 16384, 1<<32 - 1, 1 << 32, 1<<63 - 1, 1 << 63, ^uint64(0)} {
		e := &encoder{}
		e.u64(v)
		d := &decoder{b: e.buf}
		if got := d.u64("v"); got != v || d.finish() != nil {
			t.Fatalf("%d: got %d, %v (% x)", v, got, d.err, e.buf)
		}
	}
	e := &encoder{}
	e.u32(1<<32 - 1)
	if d := (&decoder{b: e.buf}); d.u32("v") != 1<<32-1 || d.finish() != nil || len(e.buf) != 5 {
		t.Fatalf("max u32: % x", e.buf)
	}
}

func TestReadFrame(t *testing.T) {
	if _, err := readFrame(bytes.NewReader(nil), 100); err != io.EOF {
		t.Fatalf("empty stream: %v, want io.EOF", err)
	}
	var trunc *TruncatedError
	if _, err := readFrame(bytes.NewReader([]byte{5, 0}), 100); !errors.As(err, &trunc) {
		t.Fatalf("cut prefix: %v", err)
	}
	if _, err := readFrame(bytes.NewReader([]byte{5, 0, 0, 0, 1, 2}), 100); !errors.As(err, &trunc) {
		t.Fatalf("cut body: %v", err)
	}
	var big *FrameTooLargeError
	if _, err := readFrame(bytes.NewReader([]byte{101, 0, 0, 0}), 100); !errors.As(err, &big) || big.Len != 101 {
		t.Fatalf("over the limit: %v", err)
	}
	var de *DecodeError
	if _, err := readFrame(bytes.NewReader([]byte{0, 0, 0, 0}), 100); !errors.As(err, &de) {
		t.Fatalf("empty body: %v", err)
	}
	// A prefix that promises 64 MiB and delivers 10 bytes must not
	// allocate 64 MiB.
	frame := binary.LittleEndian.AppendUint32(nil, DefaultMaxResponseFrame)
	frame = append(frame, make([]byte, 10)...)
	allocs := testing.AllocsPerRun(5, func() {
		readFrame(bytes.NewReader(frame), DefaultMaxResponseFrame)
	})
	var ms runtimeMem
	ms.measure(func() { readFrame(bytes.NewReader(frame), DefaultMaxResponseFrame) })
	if ms.bytes > 1<<20 {
		t.Fatalf("a lying prefix made readFrame allocate %d bytes (%v allocations)", ms.bytes, allocs)
	}
}

func TestRequestTooLarge(t *testing.T) {
	_, err := frameRequest(&request{kind: reqGenerate, generate: GenerateRequest{
		ModelID: "m", Prompt: strings.Repeat("x", MaxRequestFrame), Batch: 1,
	}})
	var tooLarge *RequestTooLargeError
	if !errors.As(err, &tooLarge) {
		t.Fatalf("want RequestTooLargeError, got %v", err)
	}
}

func TestEveryErrorCodeHasItsType(t *testing.T) {
	for i, err := range everyDaemonError() {
		if err.Code() != ErrorCode(i) {
			t.Fatalf("%T has code %d, want %d", err, err.Code(), i)
		}
		body := frameResponse(&response{kind: respError, err: err})[4:]
		got, decErr := decodeResponse(body)
		if decErr != nil {
			t.Fatal(decErr)
		}
		var de DaemonError
		if !errors.As(got.err, &de) || de.Code() != ErrorCode(i) {
			t.Fatalf("code %d decoded to %T", i, got.err)
		}
		if strings.Contains(got.err.Error(), "ErrorCode(") || len(got.err.Error()) < 15 {
			t.Fatalf("code %d: message %q", i, got.err.Error())
		}
		wantRetry := map[ErrorCode]bool{CodeBusy: true, CodeRateLimited: true, CodeWorkerCrashed: true, CodeShuttingDown: true}
		if de.Retryable() != wantRetry[de.Code()] {
			t.Fatalf("%v: Retryable = %v", de.Code(), de.Retryable())
		}
	}
	var busy *BusyError
	wrapped := errors.Join(errors.New("context"), &BusyError{RetryAfterMs: 1500})
	if !errors.As(wrapped, &busy) || busy.RetryAfter().Milliseconds() != 1500 {
		t.Fatalf("errors.As through a wrapper failed: %v", wrapped)
	}
}
