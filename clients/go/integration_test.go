package weave

// Integration tests: a real user-mode weave-broker with its sandboxed
// weave-worker serving models/digits (weavetest.Start), real sockets, real
// other users. They need root (useradd) and the release binaries.

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"io"
	"strings"
	"testing"
	"time"

	"weave-compute.local/weave/weavetest"
)

func dial(t *testing.T, b *weavetest.Broker) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := (&Dialer{ClientName: "weave-go-test"}).Dial(ctx, b.Socket)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func digits(prompt string, steps uint32, tag string) GenerateRequest {
	r := GenerateRequest{ModelID: "digits", Prompt: prompt, Seed: Ptr[uint64](7), Batch: 1}
	if steps > 0 {
		r.Steps = &steps
	}
	if tag != "" {
		r.Tag = &tag
	}
	return r
}

func TestGenerateStreamsEveryEventAndAPNG(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{Steps: 6})
	c := dial(t, b)
	if info := c.Info(); info.Role != RoleAdmin || info.Mode != ModeUser || info.Version != ProtocolVersion {
		t.Fatalf("handshake: %+v (the caller's own user-mode broker makes it admin)", info)
	}
	ctx := context.Background()
	models, err := c.ListModels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(models) != 1 || models[0].ID != "digits" || models[0].Kind != "sd1" ||
		models[0].Defaults.Width != 32 || models[0].Defaults.Scheduler != SchedulerDDIM || models[0].Bounds.MaxBatch == 0 {
		t.Fatalf("models: %+v", models)
	}
	start := time.Now()
	g, err := c.Generate(ctx, digits("a handwritten 3", 0, "u-1"))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	var img *Image
	var steps []uint32
	for {
		ev, err := g.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("stream: %v (events so far %v)", err, kinds)
		}
		if ev.Job() != g.JobID() {
			t.Fatalf("event for job %d in stream of %d", ev.Job(), g.JobID())
		}
		switch ev := ev.(type) {
		case *Queued:
			kinds = append(kinds, "queued")
			if ev.Position != 0 {
				t.Fatalf("an idle broker queued the job at position %d, want 0", ev.Position)
			}
		case *Position:
			kinds = append(kinds, "position")
		case *Started:
			kinds = append(kinds, "started")
			if ev.Seed != 7 {
				t.Fatalf("started with seed %d, sent 7", ev.Seed)
			}
		case *Progress:
			steps = append(steps, ev.Step)
			if ev.Total != 6 {
				t.Fatalf("progress total %d, the model's default is 6", ev.Total)
			}
		case *Image:
			kinds = append(kinds, "image")
			img = ev
		case *Finished:
			kinds = append(kinds, "finished")
		}
	}
	t.Logf("6 steps of digits took %v", time.Since(start))
	if got := strings.Join(kinds, ","); got != "queued,started,image,finished" {
		t.Fatalf("event order %s", got)
	}
	if fmt.Sprint(steps) != "[1 2 3 4 5 6]" {
		t.Fatalf("progress steps %v", steps)
	}
	if _, err := g.Next(); err != io.EOF {
		t.Fatalf("after Finished: %v, want io.EOF", err)
	}
	decoded, err := png.Decode(bytes.NewReader(img.PNG))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if s := decoded.Bounds().Size(); s.X != 32 || s.Y != 32 || img.Width != 32 || img.Height != 32 || img.Seed != 7 {
		t.Fatalf("image %v, event %dx%d seed %d", s, img.Width, img.Height, img.Seed)
	}
	if !bytes.Contains(img.PNG, []byte("tEXtparameters\x00a handwritten 3")) {
		t.Fatalf("no A1111 parameters text chunk in the PNG")
	}
	// The connection is still usable after a finished stream.
	st, err := c.Status(ctx)
	if err != nil || st.Mode != ModeUser || st.Worker != WorkerReady || st.Loaded == nil || st.Loaded.ModelID != "digits" {
		t.Fatalf("status after the stream: %+v, %v", st, err)
	}
}
