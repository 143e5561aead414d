// Command weave-go is a small example CLI built on the Go client:
//
//	weave-go [-socket PATH] status
//	weave-go [-socket PATH] models
//	weave-go [-socket PATH] jobs
//	weave-go [-socket PATH] generate -model digits -prompt "a 7" [-steps N] [-seed N] [-tag T] -o out.png
//	weave-go [-socket PATH] cancel JOB_ID
//
// Ctrl-C during generate cancels the job on the daemon. Errors from the
// daemon are printed in words, with exit status 1 (2 for usage errors).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"

	"weave-compute.local/weave"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func defaultSocket() string {
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "weave/weave.sock")
	}
	return "/run/weave/weave.sock"
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	global := flag.NewFlagSet("weave-go", flag.ContinueOnError)
	global.SetOutput(stderr)
	socket := global.String("socket", defaultSocket(), "the broker's socket")
	if err := global.Parse(args); err != nil || global.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: weave-go [-socket PATH] status|models|jobs|generate|cancel ...")
		return 2
	}
	c, err := (&weave.Dialer{ClientName: "weave-go-cli"}).Dial(ctx, *socket)
	if err != nil {
		fmt.Fprintln(stderr, "weave-go:", err)
		return 1
	}
	defer c.Close()
	cmd, rest := global.Arg(0), global.Args()[1:]
	switch cmd {
	case "status":
		err = status(ctx, c, stdout)
	case "models":
		err = models(ctx, c, stdout)
	case "jobs":
		err = jobs(ctx, c, stdout)
	case "generate":
		return generate(ctx, c, rest, stdout, stderr)
	case "cancel":
		if len(rest) != 1 {
			fmt.Fprintln(stderr, "usage: weave-go cancel JOB_ID")
			return 2
		}
		id, perr := strconv.ParseUint(rest[0], 10, 64)
		if perr != nil {
			fmt.Fprintln(stderr, "weave-go: JOB_ID must be a number (see `weave-go jobs`)")
			return 2
		}
		if err = c.Cancel(ctx, id); err == nil {
			fmt.Fprintf(stdout, "cancelled job %d\n", id)
		}
	default:
		fmt.Fprintf(stderr, "weave-go: unknown command %q; use status, models, jobs, generate or cancel\n", cmd)
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "weave-go:", err)
		return 1
	}
	return 0
}

func status(ctx context.Context, c *weave.Client, out io.Writer) error {
	s, err := c.Status(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "daemon %s, %v mode, role %v, up %d s\nworker %v (%d restarts), sandbox: %s\nqueue %d waiting, draining %v\n",
		s.DaemonVersion, s.Mode, c.Info().Role, s.UptimeS, s.Worker, s.WorkerRestarts, s.Sandbox, s.QueueDepth, s.Draining)
	if s.Loaded != nil {
		fmt.Fprintf(out, "loaded %s for %d s\n", s.Loaded.ModelID, s.Loaded.LoadedForS)
	}
	// One line per worker of the pool; the lines above are worker 0's.
	for _, w := range s.Workers {
		model, job, memory := "-", "-", "-"
		if w.Loaded != nil {
			model = w.Loaded.ModelID
		}
		if w.JobID != nil {
			job = fmt.Sprint(*w.JobID)
		}
		if w.Memory != nil {
			memory = fmt.Sprintf("%d MiB", w.Memory.ResidentBytes>>20)
		}
		fmt.Fprintf(out, "worker %d\t%s\t%v\tmodel=%s job=%s restarts=%d loads=%d memory=%s\n",
			w.Index, w.Device, w.State, model, job, w.Restarts, w.Loads, memory)
	}
	return nil
}

func models(ctx context.Context, c *weave.Client, out io.Writer) error {
	ms, err := c.ListModels(ctx)
	if err != nil {
		return err
	}
	for _, m := range ms {
		fmt.Fprintf(out, "%s\t%s\t%dx%d, %d steps, %v\tloaded=%v quarantined=%v\n", m.ID, m.Kind,
			m.Defaults.Width, m.Defaults.Height, m.Defaults.Steps, m.Defaults.Scheduler, m.Loaded, m.Quarantined)
	}
	return nil
}

func jobs(ctx context.Context, c *weave.Client, out io.Writer) error {
	js, err := c.Jobs(ctx)
	if err != nil {
		return err
	}
	for _, j := range js {
		tag := "-"
		if j.Tag != nil {
			tag = *j.Tag
		}
		worker := "-"
		if j.Worker != nil {
			worker = fmt.Sprint(*j.Worker)
		}
		fmt.Fprintf(out, "%d\t%s\t%v\ttag=%s worker=%s\n", j.JobID, j.ModelID, j.State, tag, worker)
	}
	return nil
}

func generate(ctx context.Context, c *weave.Client, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("generate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	model := fs.String("model", "", "model id (see `weave-go models`)")
	prompt := fs.String("prompt", "", "prompt")
	steps := fs.Uint("steps", 0, "denoising steps (0: the model's default)")
	seed := fs.Int64("seed", -1, "seed (-1: random)")
	tag := fs.String("tag", "", "end-user tag")
	out := fs.String("o", "", "output PNG path; with a batch, image i goes to PATH-i.png")
	if err := fs.Parse(args); err != nil || *model == "" || *out == "" {
		fmt.Fprintln(stderr, "usage: weave-go generate -model ID -prompt TEXT -o OUT.png [-steps N] [-seed N] [-tag T]")
		return 2
	}
	req := weave.GenerateRequest{ModelID: *model, Prompt: *prompt, Batch: 1}
	if *steps > 0 {
		req.Steps = weave.Ptr(uint32(*steps))
	}
	if *seed >= 0 {
		req.Seed = weave.Ptr(uint64(*seed))
	}
	if *tag != "" {
		req.Tag = tag
	}
	g, err := c.Generate(ctx, req)
	if err != nil {
		fmt.Fprintln(stderr, "weave-go:", err)
		return 1
	}
	images, err := g.Images(func(ev weave.Event) {
		switch ev := ev.(type) {
		case *weave.Queued:
			fmt.Fprintf(stderr, "job %d queued at position %d\n", ev.JobID, ev.Position)
		case *weave.Started:
			fmt.Fprintf(stderr, "started, seed %d\n", ev.Seed)
		case *weave.Progress:
			fmt.Fprintf(stderr, "\rstep %d/%d", ev.Step, ev.Total)
		}
	})
	fmt.Fprintln(stderr)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(stderr, "weave-go: interrupted; the daemon cancelled the job")
		} else {
			fmt.Fprintln(stderr, "weave-go:", err)
		}
		return 1
	}
	for _, img := range images {
		path := *out
		if len(images) > 1 {
			path = fmt.Sprintf("%s-%d.png", *out, img.Index)
		}
		if err := os.WriteFile(path, img.PNG, 0o644); err != nil {
			fmt.Fprintln(stderr, "weave-go:", err)
			return 1
		}
		fmt.Fprintf(stdout, "%s\t%dx%d\tseed %d\n", path, img.Width, img.Height, img.Seed)
	}
	return 0
}
