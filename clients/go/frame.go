package weave

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// frameRequest encodes a complete request frame: u32 little-endian body
// length, then the body.
func frameRequest(r *request) ([]byte, error) {
	e := &encoder{buf: make([]byte, 4, 64)}
	r.encode(e)
	n := len(e.buf) - 4
	max := MaxRequestFrame
	if r.kind == reqGenerate && r.generate.InitImage != nil {
		max = MaxImageRequestFrame
	}
	if n > max {
		return nil, &RequestTooLargeError{Len: n, Max: max}
	}
	binary.LittleEndian.PutUint32(e.buf, uint32(n))
	return e.buf, nil
}

// frameResponse encodes a complete response frame (tests, fuzzing).
func frameResponse(r *response) []byte {
	e := &encoder{buf: make([]byte, 4, 64)}
	r.encode(e)
	binary.LittleEndian.PutUint32(e.buf, uint32(len(e.buf)-4))
	return e.buf
}

// TruncatedError: the connection ended inside a frame (Got of Want bytes,
// prefix included). The connection is closed.
type TruncatedError struct{ Want, Got int64 }

func (e *TruncatedError) Error() string {
	return fmt.Sprintf("the connection ended inside a frame (%d of %d bytes); the broker stopped or dropped this connection, dial again", e.Got, e.Want)
}

// readFrame reads one frame body of at most max bytes. io.EOF means a clean
// end of stream at a frame boundary. The body buffer grows only as bytes
// arrive, so a length prefix alone cannot make us allocate max bytes.
func readFrame(r io.Reader, max uint32) ([]byte, error) {
	var prefix [4]byte
	if n, err := io.ReadFull(r, prefix[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, &TruncatedError{Want: 4, Got: int64(n)}
		}
		return nil, err
	}
	n := binary.LittleEndian.Uint32(prefix[:])
	if n > max {
		return nil, &FrameTooLargeError{Len: uint64(n), Max: uint64(max)}
	}
	if n == 0 {
		return nil, &DecodeError{Reason: "empty frame body"}
	}
	var body bytes.Buffer
	body.Grow(int(min(n, 64<<10)))
	got, err := io.CopyN(&body, r, int64(n))
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &TruncatedError{Want: 4 + int64(n), Got: 4 + got}
		}
		return nil, err
	}
	return body.Bytes(), nil
}
