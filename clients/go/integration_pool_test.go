package weave

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"weave-compute.local/weave/weavetest"
)

// A broker with a pool of two CPU workers ([worker] count = 2): Status
// lists both, two jobs submitted at once run at the same time on different
// workers, and Jobs, ChannelStats and the audit log name them.
func TestPoolOfTwoWorkersRunsTwoJobsAtOnce(t *testing.T) {
	// One libtorch thread each, so two workers share this machine's CPUs.
	b := weavetest.Start(t, weavetest.Config{Steps: 150, Worker: "count = 2\ntorch_threads = 1"})
	ctx := context.Background()
	admin := dial(t, b)
	st, err := admin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Workers) != 2 || st.Workers[0].Index != 0 || st.Workers[1].Index != 1 ||
		st.Workers[0].Device != "cpu" || st.Workers[1].Device != "cpu" {
		t.Fatalf("status of a two-worker pool: %+v", st.Workers)
	}

	// Two jobs at once, each on its own connection; neither may wait for
	// the other: both reach their first step while the other still runs.
	first, second := dial(t, b), dial(t, b)
	g1, err := first.Generate(ctx, digits("a 1", 150, "one"))
	if err != nil {
		t.Fatal(err)
	}
	g2, err := second.Generate(ctx, digits("a 2", 150, "two"))
	if err != nil {
		t.Fatal(err)
	}
	nextOfKind[*Progress](t, g1)
	nextOfKind[*Progress](t, g2)

	jobs, err := admin.Jobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	workers := map[uint64]uint32{}
	for _, j := range live(jobs) {
		if j.State != JobRunning || j.Worker == nil || j.Device == nil || *j.Device != "cpu" {
			t.Fatalf("a job of the two is not running on a worker: %+v", jobs)
		}
		workers[j.JobID] = *j.Worker
	}
	w1, ok1 := workers[g1.JobID()]
	w2, ok2 := workers[g2.JobID()]
	if len(workers) != 2 || !ok1 || !ok2 || w1 == w2 || w1 > 1 || w2 > 1 {
		t.Fatalf("two concurrent jobs should run on workers 0 and 1: %+v", jobs)
	}

	// Status names the job each worker runs; each worker's channel has
	// its own segments.
	st, err = admin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range st.Workers {
		if w.State != WorkerReady || w.JobID == nil || w.Loaded == nil || w.Loaded.ModelID != "digits" ||
			w.Loads != 1 || w.Memory == nil || w.Memory.ResidentBytes == 0 || w.Sandbox == "" {
			t.Fatalf("worker %d while both jobs run: %+v", w.Index, w)
		}
	}
	if *st.Workers[w1].JobID != g1.JobID() || *st.Workers[w2].JobID != g2.JobID() {
		t.Fatalf("status says workers run %d and %d, jobs says %d on %d and %d on %d",
			*st.Workers[0].JobID, *st.Workers[1].JobID, g1.JobID(), w1, g2.JobID(), w2)
	}
	stats, err := admin.ChannelStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(stats.Workers) != 2 || stats.KeyGeneration != stats.Workers[0].KeyGeneration {
		t.Fatalf("channel stats of a two-worker pool: %+v", stats)
	}
	for i, w := range stats.Workers {
		if w.Worker != uint32(i) || w.KeyGeneration == 0 || len(w.Segments) != 2 ||
			w.Segments[0].Direction != BrokerToWorker || w.Segments[1].Direction != WorkerToBroker {
			t.Fatalf("worker %d's channel: %+v", i, w)
		}
	}

	// Cancel both; their audit records name the worker each ran on.
	for _, id := range []uint64{g1.JobID(), g2.JobID()} {
		if err := admin.Cancel(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	var cancelled *CancelledError
	for _, g := range []*Generation{g1, g2} {
		if err := streamError(g); !errors.As(err, &cancelled) {
			t.Fatalf("job %d: %v, want CancelledError", g.JobID(), err)
		}
	}
	for id, w := range workers {
		if _, ok := b.WaitAudit(5*time.Second, "event=job", fmt.Sprintf(" job=%d ", id),
			fmt.Sprintf("worker=%d", w)); !ok {
			t.Fatalf("no audit record of job %d on worker %d: %v", id, w, b.AuditRecords())
		}
	}
	// The history keeps the worker each ran on.
	waitNoJobs(t, admin, 30*time.Second)
	jobs, err = admin.Jobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs {
		if w, ok := workers[j.JobID]; ok && (j.Worker == nil || *j.Worker != w) {
			t.Fatalf("ended job %d lost its worker %d: %+v", j.JobID, w, j)
		}
	}
}
