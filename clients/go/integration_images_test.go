package weave

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/png"
	"io"
	"testing"

	"weave-compute.local/weave/weavetest"
)

func decodeRGBA(t *testing.T, b []byte) *image.NRGBA {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out := image.NewNRGBA(img.Bounds())
	for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y++ {
		for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x++ {
			out.Set(x, y, img.At(x, y))
		}
	}
	return out
}

// A real init image to a real broker: a generated 3 is sent back as the
// start of an img2img job (FromImage takes its size from the PNG), the
// job runs int(steps × strength) steps and returns a different image of
// that size; a broken PNG is refused naming init_image.
func TestImg2ImgSendsARealInitImage(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{})
	c := dial(t, b)
	ctx := context.Background()
	g, err := c.Generate(ctx, digits("a handwritten digit three", 10, ""))
	if err != nil {
		t.Fatal(err)
	}
	base, err := g.Images(nil)
	if err != nil || len(base) != 1 {
		t.Fatalf("base image: %v", err)
	}
	if w, h, ok := PNGSize(base[0].PNG); !ok || w != 32 || h != 32 {
		t.Fatalf("PNGSize: %d×%d %v", w, h, ok)
	}
	req := GenerateRequest{ModelID: "digits", Prompt: "a handwritten digit three", Steps: Ptr[uint32](10), Seed: Ptr[uint64](9), Batch: 1}.
		FromImage(base[0].PNG, 0.5)
	if *req.Width != 32 || *req.Height != 32 || *req.Strength != 0.5 {
		t.Fatalf("FromImage: %+v", req)
	}
	g, err = c.Generate(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var totals []uint32
	var out *Image
	for {
		ev, err := g.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("img2img: %v\n%s", err, b.LogText())
		}
		switch ev := ev.(type) {
		case *Progress:
			totals = append(totals, ev.Total)
		case *Image:
			out = ev
		}
	}
	if out == nil || len(totals) != 5 || totals[0] != 5 {
		t.Fatalf("img2img of 10 steps at 0.5: progress totals %v, image %v", totals, out != nil)
	}
	if !bytes.Contains(out.PNG, []byte("Denoising strength: 0.5")) {
		t.Fatal("the parameters chunk lacks the strength")
	}
	before, after := decodeRGBA(t, base[0].PNG), decodeRGBA(t, out.PNG)
	if after.Bounds() != before.Bounds() || bytes.Equal(after.Pix, before.Pix) {
		t.Fatalf("img2img returned %v, unchanged=%v", after.Bounds(), bytes.Equal(after.Pix, before.Pix))
	}

	var invalid *InvalidParameterError
	broken := GenerateRequest{ModelID: "digits", Prompt: "a 3", Batch: 1}.FromImage(base[0].PNG[:40], 0)
	if _, err := c.Generate(ctx, broken); !errors.As(err, &invalid) || invalid.Field != "init_image" {
		t.Fatalf("truncated init image: %v", err)
	}
	noInit := GenerateRequest{ModelID: "digits", Prompt: "a 3", Batch: 1, Strength: Ptr[float32](0.5)}
	if _, err := c.Generate(ctx, noInit); !errors.As(err, &invalid) || invalid.Field != "strength" {
		t.Fatalf("strength without init image: %v", err)
	}
}
