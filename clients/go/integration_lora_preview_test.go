package weave

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"weave-compute.local/weave/weavetest"
)

// drain reads a job's stream to the end: its previews in order, its images.
func drain(t *testing.T, b *weavetest.Broker, g *Generation) ([]*Preview, []*Image) {
	t.Helper()
	var previews []*Preview
	imageSeen := false
	images, err := g.Images(func(ev Event) {
		switch ev := ev.(type) {
		case *Preview:
			if imageSeen {
				t.Errorf("a preview of step %d came after an image", ev.Step)
			}
			previews = append(previews, ev)
		case *Image:
			imageSeen = true
		}
	})
	if err != nil {
		t.Fatalf("stream: %v\n%s", err, b.LogText())
	}
	return previews, images
}

func generateOne(t *testing.T, b *weavetest.Broker, c *Client, req GenerateRequest) *Image {
	t.Helper()
	g, err := c.Generate(context.Background(), req)
	if err != nil {
		t.Fatalf("generate: %v\n%s", err, b.LogText())
	}
	_, images := drain(t, b, g)
	if len(images) != 1 {
		t.Fatalf("%d images, want 1", len(images))
	}
	return images[0]
}

// A configured LoRA through the Go client, a real broker and sandboxed
// worker: it changes the image, weight 0 is the base image bit for bit, the
// PNG names its hash and weight as A1111 does, and ids that are not
// configured for the model, or too many LoRAs, are refused by field.
func TestLorasChangeTheImageAndAreNamedInThePNG(t *testing.T) {
	lora := weavetest.DigitsBoldLora(t)
	b := weavetest.Start(t, weavetest.Config{
		Limits: "max_loras = 1",
		Sections: fmt.Sprintf("[[model]]\nid = \"other\"\nkind = \"sd1\"\npath = %q\n\n"+
			"[[lora]]\nid = \"digits-bold\"\npath = %q\nmodels = [\"digits\"]\n\n"+
			"[[lora]]\nid = \"for-other\"\npath = %q\nmodels = [\"other\"]\n", weavetest.DigitsModel(t), lora, lora),
	})
	c := dial(t, b)
	base := generateOne(t, b, c, digits("a handwritten digit five", 10, ""))
	withLora := func(weight float32) GenerateRequest {
		r := digits("a handwritten digit five", 10, "")
		r.Loras = []LoraChoice{{ID: "digits-bold", Weight: weight}}
		return r
	}
	bold := generateOne(t, b, c, withLora(1))
	zero := generateOne(t, b, c, withLora(0))
	basePix, boldPix, zeroPix := decodeRGBA(t, base.PNG).Pix, decodeRGBA(t, bold.PNG).Pix, decodeRGBA(t, zero.PNG).Pix
	if bytes.Equal(basePix, boldPix) {
		t.Fatal("the LoRA at weight 1 left the image unchanged")
	}
	if !bytes.Equal(basePix, zeroPix) {
		t.Fatal("the LoRA at weight 0 changed the image")
	}
	for _, want := range []string{`Lora hashes: "digits-bold: `, `Lora weights: "digits-bold: 1`} {
		if !bytes.Contains(bold.PNG, []byte(want)) {
			t.Fatalf("the PNG's parameters lack %q", want)
		}
	}
	if bytes.Contains(base.PNG, []byte("Lora hashes")) {
		t.Fatal("a job without LoRAs names one in its PNG")
	}

	var invalid *InvalidParameterError
	for _, tc := range []struct {
		loras []LoraChoice
		field string
	}{
		{[]LoraChoice{{ID: "nope", Weight: 1}}, "loras.id"},
		{[]LoraChoice{{ID: "for-other", Weight: 1}}, "loras.id"},
		{[]LoraChoice{{ID: "digits-bold", Weight: 1}, {ID: "digits-bold", Weight: 0.5}}, "loras"},
	} {
		r := digits("a 5", 4, "")
		r.Loras = tc.loras
		if _, err := c.Generate(context.Background(), r); !errors.As(err, &invalid) || invalid.Field != tc.field {
			t.Fatalf("loras %+v: %v, want InvalidParameter naming %s", tc.loras, err, tc.field)
		}
	}
	// The refusals cost nothing already accepted: the next job still runs.
	if again := generateOne(t, b, c, withLora(1)); !bytes.Equal(decodeRGBA(t, again.PNG).Pix, boldPix) {
		t.Fatal("the same LoRA request gave another image after the refusals")
	}
}

// Previews through the Go client: every second step of a 10-step job, in
// step order, before the image, each a PNG of the size it says (twice the
// demo model's 8×8 latent); none without PreviewEvery; a rate above the
// job's steps, or under limits.min_preview_every, is refused by field.
func TestPreviewsArriveInStepOrderBeforeTheImage(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{Limits: "min_preview_every = 2"})
	c := dial(t, b)
	req := digits("a handwritten digit seven", 10, "")
	req.PreviewEvery = 2
	g, err := c.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	previews, images := drain(t, b, g)
	if len(images) != 1 || len(previews) == 0 {
		t.Fatalf("%d previews, %d images", len(previews), len(images))
	}
	last := uint32(0)
	for _, p := range previews {
		if p.Index != 0 || p.Total != 10 || p.Step%2 != 0 || p.Step <= last || p.Step > 10 {
			t.Fatalf("preview %+v after step %d", *p, last)
		}
		last = p.Step
		w, h, ok := PNGSize(p.PNG)
		if !ok || w != p.Width || h != p.Height || w != 16 || h != 16 {
			t.Fatalf("preview of step %d: PNG %d×%d (%v), says %d×%d, want 16×16", p.Step, w, h, ok, p.Width, p.Height)
		}
		decodeRGBA(t, p.PNG)
	}
	// The job's audit record counts what the broker sent and dropped (it
	// drops previews a slow reader leaves unwritten): this stream holds
	// exactly the sent ones, and the two make all five.
	record, ok := b.WaitAudit(5*time.Second, "event=job", "previews_sent=")
	if !ok {
		t.Fatalf("no audit record counts the previews: %v", b.AuditRecords())
	}
	sent, dropped := auditNumber(t, record, "previews_sent"), auditNumber(t, record, "previews_dropped")
	if sent != len(previews) || sent+dropped != 5 {
		t.Fatalf("previews at steps %v; audit: %s", steps(previews), record)
	}

	g, err = c.Generate(context.Background(), digits("a handwritten digit seven", 10, ""))
	if err != nil {
		t.Fatal(err)
	}
	if none, _ := drain(t, b, g); len(none) != 0 {
		t.Fatalf("%d previews without PreviewEvery", len(none))
	}
	var invalid *InvalidParameterError
	for _, every := range []uint32{1, 11} {
		r := digits("a 7", 10, "")
		r.PreviewEvery = every
		if _, err := c.Generate(context.Background(), r); !errors.As(err, &invalid) || invalid.Field != "preview_every" {
			t.Fatalf("preview_every %d: %v, want InvalidParameter naming preview_every", every, err)
		}
	}
}

// auditNumber is the value of `key=N` in an audit record.
func auditNumber(t *testing.T, record, key string) int {
	t.Helper()
	for _, field := range strings.Fields(record) {
		if v, ok := strings.CutPrefix(field, key+"="); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("%s in %s: %v", key, record, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in %s", key, record)
	return 0
}

func steps(previews []*Preview) []uint32 {
	out := make([]uint32, len(previews))
	for i, p := range previews {
		out[i] = p.Step
	}
	return out
}
