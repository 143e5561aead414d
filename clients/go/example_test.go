package weave_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"weave-compute.local/weave"
)

func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel() // cancels the job on the daemon if it is still running
	c, err := weave.Dial(ctx, os.Getenv("XDG_RUNTIME_DIR")+"/weave/weave.sock")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	g, err := c.Generate(ctx, weave.GenerateRequest{
		ModelID: "digits", Prompt: "a handwritten 7", Seed: weave.Ptr[uint64](42), Batch: 1,
	})
	if err != nil {
		log.Fatal(err) // refused before admission: nothing was queued
	}
	for {
		ev, err := g.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		switch ev := ev.(type) {
		case *weave.Queued:
			fmt.Println("queued, position", ev.Position)
		case *weave.Progress:
			fmt.Printf("step %d of %d\n", ev.Step, ev.Total)
		case *weave.Image:
			os.WriteFile("seven.png", ev.PNG, 0o644)
		}
	}
}

func ExampleBusyError() {
	c, err := weave.Dial(context.Background(), "/run/weave/weave.sock")
	if err != nil {
		log.Fatal(err)
	}
	req := weave.GenerateRequest{ModelID: "digits", Batch: 1}
	for attempt := 0; attempt < 3; attempt++ {
		g, err := c.Generate(context.Background(), req)
		var busy *weave.BusyError
		var limited *weave.RateLimitedError
		switch {
		case errors.As(err, &busy):
			time.Sleep(busy.RetryAfter())
			continue
		case errors.As(err, &limited):
			time.Sleep(limited.RetryAfter())
			continue
		case err != nil:
			log.Fatal(err)
		}
		images, err := g.Images(nil)
		fmt.Println(len(images), err)
		return
	}
}

func ExampleDialer() {
	// A system-mode broker whose config names another service account.
	d := weave.Dialer{ClientName: "my-web-app", ServiceAccount: "imagegen"}
	c, err := d.Dial(context.Background(), "/run/weave/weave.sock")
	var refused *weave.RefusedError
	if errors.As(err, &refused) {
		log.Fatal("this user is not in the broker's client group")
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(c.Info().Role)
}
