// Package weave is a client for weave-broker, the local image-generation
// daemon of weave-compute, over its Unix socket. It uses only the standard
// library. The wire protocol is docs/PROTOCOL.md; every hex example there
// is checked against this package by its tests.
//
// Dial connects, checks who is behind the socket (the socket folder's owner
// and mode, and the kernel's record of which uid created the listening
// socket) and completes the handshake. Each request is a method; Generate
// returns a stream of typed events:
//
//	c, err := weave.Dial(ctx, "/run/weave/weave.sock")
//	if err != nil { ... }
//	defer c.Close()
//	g, err := c.Generate(ctx, weave.GenerateRequest{ModelID: "digits", Prompt: "a 7", Batch: 1})
//	var busy *weave.BusyError
//	if errors.As(err, &busy) { retry after busy.RetryAfter() }
//	for {
//		ev, err := g.Next()
//		if err == io.EOF { break }      // after *weave.Finished
//		if err != nil { ... }           // *weave.CancelledError, *weave.TimedOutError, ...
//		switch ev := ev.(type) {
//		case *weave.Progress: fmt.Println(ev.Step, "/", ev.Total)
//		case *weave.Image:    os.WriteFile("out.png", ev.PNG, 0o644)
//		}
//	}
//
// Cancelling ctx during a stream closes the connection; the daemon notices
// within about 50 ms and cancels the job, queued or running. Every error
// code the daemon sends has its own type for errors.As (*BusyError,
// *InvalidParameterError, ...), all of which satisfy DaemonError.
//
// A Client is one connection and the protocol is sequential: requests on
// it wait for each other, and a Generate stream holds it until it ends.
// Dial one Client per concurrent generation.
//
// Decoding is strict: varints must be canonical and fit their type, bools
// and Option tags must be 0 or 1, strings UTF-8, enum values known, and no
// byte may follow a message; a frame over Dialer.MaxResponseFrame is
// refused from its length prefix. Any such error closes the connection.
//
// The package weavetest starts a real broker for tests.
package weave
