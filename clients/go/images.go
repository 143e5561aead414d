package weave

import "encoding/binary"

// pngHead is the PNG signature followed by the length and type of the
// IHDR chunk every PNG starts with.
var pngHead = []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR")

// PNGSize returns the width and height in a PNG's IHDR header, and false
// when the bytes do not start like a PNG. It reads the header only; the
// broker checks the whole file.
func PNGSize(png []byte) (width, height uint32, ok bool) {
	if len(png) < 24 || string(png[:16]) != string(pngHead) {
		return 0, 0, false
	}
	return binary.BigEndian.Uint32(png[16:20]), binary.BigEndian.Uint32(png[20:24]), true
}

// FromImage returns r as an img2img request starting from initPNG (PNG
// bytes, e.g. an Image event's PNG or an upload). strength is the share
// of the steps run on the noised image, above 0 and at most 1; 0 leaves
// it to the broker (DefaultStrength). A nil Width or Height is set from
// the PNG's header, since the image must have the request's size.
func (r GenerateRequest) FromImage(initPNG []byte, strength float32) GenerateRequest {
	r.InitImage = initPNG
	r.Mask = nil
	r.Strength = nil
	if strength != 0 {
		r.Strength = &strength
	}
	if w, h, ok := PNGSize(initPNG); ok {
		if r.Width == nil {
			r.Width = &w
		}
		if r.Height == nil {
			r.Height = &h
		}
	}
	return r
}

// Inpaint is FromImage with a mask of the same size: white pixels are
// repainted, black ones kept exactly (color is read as luma, split at
// 128).
func (r GenerateRequest) Inpaint(initPNG, maskPNG []byte, strength float32) GenerateRequest {
	r = r.FromImage(initPNG, strength)
	r.Mask = maskPNG
	return r
}
