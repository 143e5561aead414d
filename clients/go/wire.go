package weave

import (
	"encoding/binary"
	"fmt"
	"math"
	"unicode/utf8"
)

// The postcard subset of docs/PROTOCOL.md ("Encoding"): LEB128 varints that
// must be canonical and fit their type, bool and Option tags that are 0 or 1,
// UTF-8 strings, little-endian f32, length-prefixed sequences.

// Widest varint, in bytes, for each unsigned width (ceil(bits / 7)).
const (
	varintBytes16 = 3
	varintBytes32 = 5
	varintBytes64 = 10
)

// encoder appends a message body to buf.
type encoder struct {
	buf []byte
}

func (e *encoder) uvarint(v uint64) { e.buf = binary.AppendUvarint(e.buf, v) }
func (e *encoder) u16(v uint16)     { e.uvarint(uint64(v)) }
func (e *encoder) u32(v uint32)     { e.uvarint(uint64(v)) }
func (e *encoder) u64(v uint64)     { e.uvarint(v) }

func (e *encoder) bool(v bool) {
	if v {
		e.buf = append(e.buf, 1)
	} else {
		e.buf = append(e.buf, 0)
	}
}

func (e *encoder) f32(v float32) {
	e.buf = binary.LittleEndian.AppendUint32(e.buf, math.Float32bits(v))
}

func (e *encoder) str(s string) {
	e.uvarint(uint64(len(s)))
	e.buf = append(e.buf, s...)
}

func (e *encoder) bytes(b []byte) {
	e.uvarint(uint64(len(b)))
	e.buf = append(e.buf, b...)
}

// variant writes an enum variant index (a u32 varint).
func (e *encoder) variant(index uint32) { e.u32(index) }

// some writes an Option tag and reports whether the value follows.
func (e *encoder) some(present bool) bool {
	e.bool(present)
	return present
}

func (e *encoder) optU32(v *uint32) {
	if e.some(v != nil) {
		e.u32(*v)
	}
}

func (e *encoder) optU64(v *uint64) {
	if e.some(v != nil) {
		e.u64(*v)
	}
}

func (e *encoder) optF32(v *float32) {
	if e.some(v != nil) {
		e.f32(*v)
	}
}

// optBytes writes nil as None and any other slice (empty included) as
// Some(bytes).
func (e *encoder) optBytes(v []byte) {
	if e.some(v != nil) {
		e.bytes(v)
	}
}

func (e *encoder) optStr(v *string) {
	if e.some(v != nil) {
		e.str(*v)
	}
}

// decoder reads one message body. The first error sticks: later reads
// return zero values, and err says where decoding failed.
type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = &DecodeError{Offset: d.off, Reason: fmt.Sprintf(format, args...)}
	}
}

// uvarint reads a canonical LEB128 varint of at most maxBytes bytes whose
// value is at most max.
func (d *decoder) uvarint(maxBytes int, max uint64, what string) uint64 {
	if d.err != nil {
		return 0
	}
	var v uint64
	for i := 0; i < maxBytes; i++ {
		if d.off+i >= len(d.b) {
			d.fail("%s: varint runs past the end of the message", what)
			return 0
		}
		c := d.b[d.off+i]
		v |= uint64(c&0x7f) << (7 * i)
		if c&0x80 != 0 {
			continue
		}
		if i > 0 && c == 0 {
			d.fail("%s: over-long varint (not the shortest form)", what)
			return 0
		}
		// The last byte of a 10-byte u64 carries bit 63 only; bits above
		// it were shifted out of v, so check the byte itself.
		if i == varintBytes64-1 && c > 1 {
			d.fail("%s: varint does not fit in 64 bits", what)
			return 0
		}
		if v > max {
			d.fail("%s: value %d out of range (at most %d)", what, v, max)
			return 0
		}
		d.off += i + 1
		return v
	}
	d.fail("%s: varint longer than %d bytes", what, maxBytes)
	return 0
}

func (d *decoder) u16(what string) uint16 {
	return uint16(d.uvarint(varintBytes16, math.MaxUint16, what))
}

func (d *decoder) u32(what string) uint32 {
	return uint32(d.uvarint(varintBytes32, math.MaxUint32, what))
}

func (d *decoder) u64(what string) uint64 {
	return d.uvarint(varintBytes64, math.MaxUint64, what)
}

func (d *decoder) byte1(what string) byte {
	if d.err != nil {
		return 0
	}
	if d.off >= len(d.b) {
		d.fail("%s: message ends early", what)
		return 0
	}
	c := d.b[d.off]
	d.off++
	return c
}

func (d *decoder) bool(what string) bool {
	switch c := d.byte1(what); c {
	case 0:
		return false
	case 1:
		return true
	default:
		d.off--
		d.fail("%s: bool byte %#02x is neither 00 nor 01", what, c)
		return false
	}
}

// some reads an Option tag: true when a value follows.
func (d *decoder) some(what string) bool {
	switch c := d.byte1(what); c {
	case 0:
		return false
	case 1:
		return true
	default:
		d.off--
		d.fail("%s: Option tag %#02x is neither 00 nor 01", what, c)
		return false
	}
}

func (d *decoder) f32(what string) float32 {
	if d.err != nil {
		return 0
	}
	if len(d.b)-d.off < 4 {
		d.fail("%s: f32 runs past the end of the message", what)
		return 0
	}
	v := math.Float32frombits(binary.LittleEndian.Uint32(d.b[d.off:]))
	d.off += 4
	return v
}

// length reads a byte or element count and checks that the message has at
// least that many bytes left (every element is at least one byte), so a
// count can never make us allocate more than the frame holds.
func (d *decoder) length(what string) int {
	n := d.u64(what)
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.b)-d.off) {
		d.fail("%s: length %d exceeds the %d bytes left", what, n, len(d.b)-d.off)
		return 0
	}
	return int(n)
}

func (d *decoder) raw(what string) []byte {
	n := d.length(what)
	if d.err != nil {
		return nil
	}
	out := make([]byte, n)
	copy(out, d.b[d.off:d.off+n])
	d.off += n
	return out
}

func (d *decoder) str(what string) string {
	n := d.length(what)
	if d.err != nil {
		return ""
	}
	s := d.b[d.off : d.off+n]
	if !utf8.Valid(s) {
		d.fail("%s: string is not valid UTF-8", what)
		return ""
	}
	d.off += n
	return string(s)
}

// variant reads an enum index and checks it against the count of variants.
func (d *decoder) variant(count uint32, what string) uint32 {
	v := d.u32(what)
	if d.err == nil && v >= count {
		d.off -= len(binary.AppendUvarint(nil, uint64(v)))
		d.fail("%s: unknown variant %d (this client knows %d)", what, v, count)
		return 0
	}
	return v
}

func (d *decoder) optU32(what string) *uint32 {
	if !d.some(what) {
		return nil
	}
	v := d.u32(what)
	return &v
}

func (d *decoder) optU64(what string) *uint64 {
	if !d.some(what) {
		return nil
	}
	v := d.u64(what)
	return &v
}

func (d *decoder) optF32(what string) *float32 {
	if !d.some(what) {
		return nil
	}
	v := d.f32(what)
	return &v
}

func (d *decoder) optBytes(what string) []byte {
	if !d.some(what) {
		return nil
	}
	return d.raw(what)
}

func (d *decoder) optStr(what string) *string {
	if !d.some(what) {
		return nil
	}
	v := d.str(what)
	return &v
}

// finish reports the first error, or trailing bytes after the message.
func (d *decoder) finish() error {
	if d.err == nil && d.off != len(d.b) {
		d.fail("%d bytes follow the end of the message", len(d.b)-d.off)
	}
	return d.err
}
