package weave

import (
	"context"
	"fmt"
	"io"
)

// Generation is the event stream of one Generate request. Read it with
// Next until it returns an error: io.EOF after *Finished, or the error that
// ended the job. It holds the connection until then.
type Generation struct {
	c     *Client
	ctx   context.Context
	end   func()
	jobID uint64
	first *response // the first frame, read by Generate
	seen  int       // events returned so far
	done  bool
	err   error // what Next returns once done
}

// Generate submits a job and returns its event stream. A request the
// broker refuses before admission (InvalidParameter, UnknownModel, Busy,
// RateLimited, ShuttingDown, ...) is returned here as the typed error, and
// nothing was queued.
//
// ctx covers the whole stream: when it is done, the connection is closed,
// the daemon cancels the job (queued or running) within about 50 ms, Next
// returns an error that wraps ctx.Err(), and the Client is closed.
func (c *Client) Generate(ctx context.Context, req GenerateRequest) (*Generation, error) {
	end, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := c.exchange(ctx, &request{kind: reqGenerate, generate: req})
	if err != nil {
		end()
		return nil, err
	}
	if resp.kind != respQueued {
		end()
		c.Close()
		return nil, &DecodeError{Reason: fmt.Sprintf("a Generate stream began with %v, expected Queued", resp.kind)}
	}
	return &Generation{c: c, ctx: ctx, end: end, jobID: resp.event.Job(), first: resp}, nil
}

// JobID is the id the broker assigned (for Cancel from another connection
// and for matching Jobs entries).
func (g *Generation) JobID() uint64 { return g.jobID }

// Next returns the next event: *Queued (first), *Position, *Started,
// *Progress, *Preview (with PreviewEvery), *Image, and *Finished (last). After *Finished it returns
// io.EOF. A job that fails after admission ends with its typed error
// (*CancelledError, *TimedOutError, *WorkerCrashedError, ...); images
// already returned are complete and valid.
func (g *Generation) Next() (Event, error) {
	if g.done {
		return nil, g.err
	}
	var resp *response
	if g.first != nil {
		resp, g.first = g.first, nil
	} else {
		var err error
		resp, err = g.c.recv()
		if err != nil {
			g.c.Close()
			return nil, g.finish(g.c.ioError(g.ctx, err))
		}
	}
	switch resp.kind {
	case respError:
		if _, ok := resp.err.(*ProtocolError); ok {
			g.c.Close()
		}
		return nil, g.finish(resp.err)
	case respQueued, respPosition, respStarted, respProgress, respImage, respFinished, respPreview:
	default:
		g.c.Close()
		return nil, g.finish(&DecodeError{Reason: fmt.Sprintf("%v in the middle of a Generate stream", resp.kind)})
	}
	if resp.event.Job() != g.jobID || (resp.kind == respQueued) != (g.seen == 0) {
		g.c.Close()
		return nil, g.finish(&DecodeError{Reason: fmt.Sprintf(
			"event %v for job %d out of place in the stream of job %d", resp.kind, resp.event.Job(), g.jobID)})
	}
	g.seen++
	if resp.kind == respFinished {
		g.finish(io.EOF)
	}
	return resp.event, nil
}

// finish ends the stream with err and releases the connection.
func (g *Generation) finish(err error) error {
	g.done = true
	g.err = err
	g.end()
	return err
}

// Close abandons the stream if it has not ended: the connection is closed
// and the daemon cancels the job. After a stream ended, Close does nothing
// and the Client stays usable.
func (g *Generation) Close() error {
	if g.done {
		return nil
	}
	g.c.Close()
	g.finish(ErrClosed)
	return nil
}

// Images reads the stream to its end and returns the images. onEvent, if
// not nil, sees every event first (progress bars).
func (g *Generation) Images(onEvent func(Event)) ([]*Image, error) {
	var images []*Image
	for {
		ev, err := g.Next()
		if err == io.EOF {
			return images, nil
		}
		if err != nil {
			return images, err
		}
		if onEvent != nil {
			onEvent(ev)
		}
		if img, ok := ev.(*Image); ok {
			images = append(images, img)
		}
	}
}
