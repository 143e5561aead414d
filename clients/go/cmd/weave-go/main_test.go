package main

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"weave-compute.local/weave/weavetest"
)

func TestCLIAgainstARealBroker(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{Steps: 3})
	ctx := context.Background()
	var out, errOut bytes.Buffer
	if code := run(ctx, []string{"-socket", b.Socket, "models"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "digits\tsd1\t32x32") {
		t.Fatalf("models: %d %q %q", code, out.String(), errOut.String())
	}
	path := filepath.Join(t.TempDir(), "digit.png")
	out.Reset()
	code := run(ctx, []string{"-socket", b.Socket, "generate", "-model", "digits", "-prompt", "a 2", "-seed", "5", "-o", path}, &out, &errOut)
	if code != 0 || !strings.Contains(out.String(), "32x32\tseed 5") {
		t.Fatalf("generate: %d %q %q", code, out.String(), errOut.String())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err := png.DecodeConfig(bytes.NewReader(data)); err != nil || cfg.Width != 32 {
		t.Fatalf("written PNG: %+v %v", cfg, err)
	}
	out.Reset()
	errOut.Reset()
	if code := run(ctx, []string{"-socket", b.Socket, "cancel", "12345"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "invalid job_id") {
		t.Fatalf("cancel of an unknown job: %d %q", code, errOut.String())
	}
	out.Reset()
	if code := run(ctx, []string{"-socket", b.Socket, "status"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "user mode, role admin") ||
		!strings.Contains(out.String(), "worker 0\tcpu\tready\tmodel=digits job=- restarts=0 loads=1 memory=") {
		t.Fatalf("status: %d %q", code, out.String())
	}
	out.Reset()
	if code := run(ctx, []string{"-socket", b.Socket, "jobs"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "\tdigits\tfinished\ttag=- worker=0\n") {
		t.Fatalf("jobs: %d %q", code, out.String())
	}
	errOut.Reset()
	if code := run(ctx, []string{"-socket", b.Socket, "bogus"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "unknown command") {
		t.Fatalf("unknown command: %d %q", code, errOut.String())
	}
}
