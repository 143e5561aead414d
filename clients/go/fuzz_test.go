package weave

import (
	"bytes"
	"testing"
)

// FuzzDecodeResponse: the decoder never panics, and whatever it accepts
// re-encodes to exactly the same bytes (strict decoding leaves one byte
// form per message). Seeds: every response example of docs/PROTOCOL.md.
// Run longer with: go test -run '^$' -fuzz FuzzDecodeResponse -fuzztime 60s
func FuzzDecodeResponse(f *testing.F) {
	for name, frame := range docExamples(f) {
		if len(name) > 9 && name[:9] == "response/" {
			f.Add(frame[4:])
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := decodeResponse(body)
		if err != nil {
			return
		}
		if enc := frameResponse(r)[4:]; !bytes.Equal(enc, body) {
			t.Fatalf("accepted % x but it re-encodes as % x", body, enc)
		}
	})
}

// FuzzDecodeRequest: the same property for requests (the conformance
// direction the broker implements).
func FuzzDecodeRequest(f *testing.F) {
	for name, frame := range docExamples(f) {
		if len(name) > 8 && name[:8] == "request/" {
			f.Add(frame[4:])
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := decodeRequest(body)
		if err != nil {
			return
		}
		enc, err := frameRequest(r)
		if err != nil {
			return // over MaxRequestFrame: the client would not send it
		}
		if !bytes.Equal(enc[4:], body) {
			t.Fatalf("accepted % x but it re-encodes as % x", body, enc[4:])
		}
	})
}

// FuzzReadFrame: framing with a small limit never panics, never returns a
// body longer than the limit or than the input.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 0x0b})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, stream []byte) {
		body, err := readFrame(bytes.NewReader(stream), 1024)
		if err == nil && (len(body) > 1024 || len(body)+4 > len(stream)) {
			t.Fatalf("body of %d bytes from a %d-byte stream", len(body), len(stream))
		}
	})
}
