package weave

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"weave-compute.local/weave/weavetest"
)

// nextOfKind reads events until one of type T arrives.
func nextOfKind[T Event](t *testing.T, g *Generation) T {
	t.Helper()
	for {
		ev, err := g.Next()
		if err != nil {
			t.Fatalf("stream ended before the event: %v", err)
		}
		if want, ok := ev.(T); ok {
			return want
		}
	}
}

// streamError reads a stream to its end and returns the error that ended it.
func streamError(g *Generation) error {
	for {
		if _, err := g.Next(); err != nil {
			return err
		}
	}
}

// live drops the broker's history of ended jobs.
func live(jobs []JobInfo) []JobInfo {
	var out []JobInfo
	for _, j := range jobs {
		if j.State != JobFinished && j.State != JobFailed {
			out = append(out, j)
		}
	}
	return out
}

func waitNoJobs(t *testing.T, c *Client, within time.Duration) {
	t.Helper()
	end := time.Now().Add(within)
	for {
		jobs, err := c.Jobs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(live(jobs)) == 0 {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("jobs still queued or running after %v: %+v", within, jobs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestContextCancelCancelsOnTheDaemon(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{Steps: 150})
	watcher := dial(t, b)
	c := dial(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g, err := c.Generate(ctx, digits("a 5", 150, ""))
	if err != nil {
		t.Fatal(err)
	}
	nextOfKind[*Progress](t, g)
	jobs, err := watcher.Jobs(context.Background())
	if err != nil || len(jobs) != 1 || jobs[0].JobID != g.JobID() || jobs[0].State != JobRunning {
		t.Fatalf("the running job is not listed: %+v %v", jobs, err)
	}
	cancel()
	if err := streamError(g); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after cancel: %v, want context.Canceled", err)
	}
	if _, err := c.Status(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("the client should be closed after a cancelled stream: %v", err)
	}
	// The daemon noticed the hang-up and cancelled the job: it is gone
	// from Jobs and its audit record says cancelled, long before 150
	// steps could have run. (Whether the broker also writes
	// client_disconnected depends on which of its checks sees the
	// hang-up first.)
	// Within 2 s (the broker polls for the hang-up every 50 ms) the job is
	// marked Cancelling or gone; it stops at the next step boundary, which
	// on a loaded machine can take a while.
	end := time.Now().Add(2 * time.Second)
	for {
		jobs, err := watcher.Jobs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(live(jobs)) == 0 || jobs[0].State == JobCancelling {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the daemon did not cancel the job after the context was: %+v", jobs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitNoJobs(t, watcher, 30*time.Second)
	if _, ok := b.WaitAudit(5*time.Second, "event=job", "outcome=cancelled", "steps=150"); !ok {
		t.Fatalf("no cancelled job record: %v", b.AuditRecords())
	}
	// The worker is free again: a short job runs to the end.
	g2, err := watcher.Generate(context.Background(), digits("a 6", 2, ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g2.Images(nil); err != nil {
		t.Fatalf("generation after the cancel: %v", err)
	}
}

func TestJobsTagsAndCancelVerb(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{Steps: 150})
	ctx := context.Background()
	running, queued, admin := dial(t, b), dial(t, b), dial(t, b)
	gRun, err := running.Generate(ctx, digits("a 1", 150, "alice"))
	if err != nil {
		t.Fatal(err)
	}
	nextOfKind[*Started](t, gRun)
	gQueued, err := queued.Generate(ctx, digits("a 2", 150, "bob"))
	if err != nil {
		t.Fatal(err)
	}
	q := nextOfKind[*Queued](t, gQueued)
	if q.Position != 0 {
		t.Fatalf("the only waiting job is at position %d, want 0 (= next)", q.Position)
	}
	jobs, err := admin.Jobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 2 || jobs[0].JobID != gRun.JobID() || jobs[0].State != JobRunning || *jobs[0].Tag != "alice" ||
		jobs[1].JobID != gQueued.JobID() || jobs[1].State != JobQueued || *jobs[1].Tag != "bob" ||
		jobs[1].Position == nil || *jobs[1].Position != 0 || jobs[0].OwnerUID != uint32(os.Geteuid()) {
		t.Fatalf("jobs: %+v", jobs)
	}
	// Cancel the queued job by id: its stream ends with Cancelled.
	if err := admin.Cancel(ctx, gQueued.JobID()); err != nil {
		t.Fatal(err)
	}
	var cancelled *CancelledError
	if err := streamError(gQueued); !errors.As(err, &cancelled) {
		t.Fatalf("queued stream: %v, want CancelledError", err)
	}
	// Then the running one, between two steps.
	if err := admin.Cancel(ctx, gRun.JobID()); err != nil {
		t.Fatal(err)
	}
	if err := streamError(gRun); !errors.As(err, &cancelled) {
		t.Fatalf("running stream: %v, want CancelledError", err)
	}
	// Unknown and finished ids get the same answer, and the connection
	// stays open after it. (The broker drops a job from its table a moment
	// after the stream's last event.)
	waitNoJobs(t, admin, 10*time.Second)
	for _, id := range []uint64{gRun.JobID(), 999999} {
		var invalid *InvalidParameterError
		if err := admin.Cancel(ctx, id); !errors.As(err, &invalid) || invalid.Field != "job_id" {
			t.Fatalf("cancel of job %d: %v", id, err)
		}
	}
	// Both streams ended with a typed error: their connections are
	// still usable.
	if _, err := running.Status(ctx); err != nil {
		t.Fatalf("connection after a cancelled stream: %v", err)
	}
}

func TestBusyAndRateLimited(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{Steps: 150,
		Limits: "per_client_queue_depth = 1\nrate_burst = 2\nrate_per_minute = 1"})
	ctx := context.Background()
	first, second := dial(t, b), dial(t, b)
	g, err := first.Generate(ctx, digits("a 7", 150, ""))
	if err != nil {
		t.Fatal(err)
	}
	nextOfKind[*Started](t, g)
	// The uid's one queue slot is taken: Busy, nothing queued, no token
	// spent, and the connection stays open.
	var busy *BusyError
	if _, err := second.Generate(ctx, digits("a 8", 2, "")); !errors.As(err, &busy) || busy.RetryAfter() <= 0 || !busy.Retryable() {
		t.Fatalf("second job: %v, want BusyError with a retry hint", err)
	}
	if err := second.Cancel(ctx, g.JobID()); err != nil {
		t.Fatal(err)
	}
	var cancelled *CancelledError
	if err := streamError(g); !errors.As(err, &cancelled) {
		t.Fatal(err)
	}
	waitNoJobs(t, second, 10*time.Second)
	// The second token runs a job; the third request finds the bucket empty.
	g, err = second.Generate(ctx, digits("a 9", 2, ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Images(nil); err != nil {
		t.Fatal(err)
	}
	// The broker frees the job's queue slot just after it sends Finished.
	waitNoJobs(t, second, 10*time.Second)
	var limited *RateLimitedError
	if _, err := second.Generate(ctx, digits("a 0", 2, "")); !errors.As(err, &limited) || limited.RetryAfterMs == 0 {
		t.Fatalf("third job: %v, want RateLimitedError", err)
	}
	var de DaemonError
	if _, err := second.Generate(ctx, digits("a 0", 2, "")); !errors.As(err, &de) || de.Code() != CodeRateLimited {
		t.Fatalf("errors.As with DaemonError: %v", err)
	}
	// Only Generate is rate-limited: other verbs still answer.
	if _, err := second.Status(ctx); err != nil {
		t.Fatalf("status while rate-limited: %v", err)
	}
}

func TestRefusalsBeforeAdmission(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{})
	c := dial(t, b)
	ctx := context.Background()
	var unknown *UnknownModelError
	if _, err := c.Generate(ctx, GenerateRequest{ModelID: "nope", Batch: 1}); !errors.As(err, &unknown) || unknown.ModelID != "nope" {
		t.Fatalf("unknown model: %v", err)
	}
	var invalid *InvalidParameterError
	if _, err := c.Generate(ctx, GenerateRequest{ModelID: "digits", Width: Ptr[uint32](33), Batch: 1}); !errors.As(err, &invalid) || invalid.Field != "width" || invalid.Allowed == "" {
		t.Fatalf("odd width: %v", err)
	}
	if err := c.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	var down *ShuttingDownError
	if _, err := c.Generate(ctx, digits("x", 2, "")); !errors.As(err, &down) {
		t.Fatalf("while draining: %v", err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	// The worker starts with the first job; until then there are no
	// channel counters.
	if stats, err := c.ChannelStats(ctx); err != nil || len(stats.Segments) != 0 || stats.KeyGeneration != 0 {
		t.Fatalf("channel stats before the worker started: %+v %v", stats, err)
	}
	// A prompt with a non-ASCII character: the parameters chunk is iTXt.
	g, err := c.Generate(ctx, digits("eine Zwei für dich", 1, ""))
	if err != nil {
		t.Fatal(err)
	}
	images, err := g.Images(nil)
	if err != nil || len(images) != 1 {
		t.Fatal(err)
	}
	if !bytes.Contains(images[0].PNG, []byte("iTXtparameters\x00")) || !bytes.Contains(images[0].PNG, []byte("eine Zwei für dich")) ||
		bytes.Contains(images[0].PNG, []byte("tEXtparameters")) {
		t.Fatal("a non-ASCII prompt should be in an iTXt parameters chunk, in UTF-8")
	}
	stats, err := c.ChannelStats(ctx)
	if err != nil || len(stats.Segments) != 2 || stats.KeyGeneration == 0 {
		t.Fatalf("channel stats: %+v %v", stats, err)
	}
	// docs/PROTOCOL.md: which counters are filled, and an honest worker
	// caused no rejections.
	out, in := stats.Segments[0], stats.Segments[1]
	if out.Direction != BrokerToWorker || out.WriteSeq == 0 || out.ReadSeq > out.WriteSeq || out.Slots == 0 || out.SlotSize == 0 ||
		in.Direction != WorkerToBroker || in.ReadSeq == 0 || in.CRCFailures != 0 || in.TagFailures != 0 || in.ReplaysRejected != 0 {
		t.Fatalf("segments: %+v", stats.Segments)
	}
	if err := c.RotateKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if after, err := c.ChannelStats(ctx); err != nil || after.KeyGeneration <= stats.KeyGeneration {
		t.Fatalf("key generation %d after rotation, was %d (%v)", after.KeyGeneration, stats.KeyGeneration, err)
	}
	// A too-large request is refused before sending; the connection lives.
	long := make([]byte, MaxRequestFrame)
	for i := range long {
		long[i] = 'a'
	}
	var tooLarge *RequestTooLargeError
	if _, err := c.Generate(ctx, GenerateRequest{ModelID: "digits", Prompt: string(long), Batch: 1}); !errors.As(err, &tooLarge) {
		t.Fatalf("oversized: %v", err)
	}
	if _, err := c.Status(ctx); err != nil {
		t.Fatalf("after a refused oversized request: %v", err)
	}
	// A deadline that passes mid-call closes the client with the
	// context's error.
	short, cancel := context.WithTimeout(ctx, time.Nanosecond)
	defer cancel()
	time.Sleep(time.Millisecond)
	if _, err := c.Status(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expired context: %v", err)
	}
	if _, err := c.ListModels(ctx); err != nil && !errors.Is(err, ErrClosed) {
		t.Fatalf("after an expired context: %v", err)
	}
}
