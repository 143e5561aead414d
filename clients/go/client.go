package weave

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
)

// DefaultClientName is the Hello client_name a Dialer sends unless told
// otherwise; the broker writes it to its audit log.
const DefaultClientName = "weave-go"

// Dialer holds the options for connecting to a broker. The zero value is
// ready to use.
type Dialer struct {
	// ClientName is the Hello label for the broker's audit log: 1 to 64
	// bytes of [A-Za-z0-9][A-Za-z0-9._-]*. Empty: DefaultClientName.
	ClientName string
	// MaxResponseFrame is the largest response body accepted. Zero:
	// DefaultMaxResponseFrame (64 MiB, a 4096×4096 PNG).
	MaxResponseFrame uint32
	// TrustedUIDs, when set, are the only uids that may own the socket's
	// directory and have created the listening socket. Nil: root, the
	// caller's own uid and ServiceAccount's uid.
	TrustedUIDs []uint32
	// ServiceAccount is the system-mode broker's account name
	// (daemon.user). Empty: DefaultServiceAccount ("weave").
	ServiceAccount string
}

// Client is one connection to the broker. The protocol is sequential: one
// request at a time, each answered in full before the next. A Client is
// safe for concurrent use, but calls wait for each other (a Generate
// stream holds the connection until it ends); dial one Client per
// concurrent generation.
type Client struct {
	conn *net.UnixConn
	r    *bufio.Reader
	max  uint32
	info ServerInfo

	turn   chan struct{} // held by the request (or Generate stream) in progress
	mu     sync.Mutex
	closed bool // under mu
}

// Dial connects to the broker's socket with the zero Dialer.
func Dial(ctx context.Context, socket string) (*Client, error) {
	var d Dialer
	return d.Dial(ctx, socket)
}

// Dial connects to socket, checks who created it (see Dialer.TrustedUIDs),
// and completes the Hello handshake. ctx bounds the whole handshake.
func (d *Dialer) Dial(ctx context.Context, socket string) (*Client, error) {
	trusted := d.trustedUIDs()
	if err := checkSocketDir(socket, trusted); err != nil {
		return nil, err
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to the broker at %s (is it running? `weave-broker --user` starts one): %w", socket, err)
	}
	conn := c.(*net.UnixConn)
	if err := checkPeer(socket, conn, trusted); err != nil {
		conn.Close()
		return nil, err
	}
	max := d.MaxResponseFrame
	if max == 0 {
		max = DefaultMaxResponseFrame
	}
	name := d.ClientName
	if name == "" {
		name = DefaultClientName
	}
	cl := &Client{
		conn: conn, r: bufio.NewReaderSize(conn, 16<<10), max: max,
		turn: make(chan struct{}, 1),
	}
	resp, err := cl.call(ctx, &request{kind: reqHello, version: ProtocolVersion, clientName: name})
	if err != nil {
		cl.Close()
		// A refused caller is closed without a byte: end of stream, or a
		// write into an already closed connection.
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
			return nil, &RefusedError{Socket: socket}
		}
		return nil, err
	}
	if resp.kind != respHello {
		cl.Close()
		return nil, &DecodeError{Reason: fmt.Sprintf("the broker answered Hello with %v", resp.kind)}
	}
	cl.info = resp.hello
	return cl, nil
}

// Info is the broker's handshake answer: its version, the caller's role
// and the daemon's mode.
func (c *Client) Info() ServerInfo { return c.info }

// Close closes the connection. A Generate stream in progress on it ends,
// and the daemon cancels its job (it watches for the hang-up).
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return c.conn.Close()
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// begin waits for the connection's turn (requests are sequential) and ties
// the connection to ctx: when ctx is done, the connection is closed, which
// unblocks any read or write and makes the daemon cancel a running job.
// end releases the turn.
func (c *Client) begin(ctx context.Context) (end func(), err error) {
	select {
	case c.turn <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("weave: %w while waiting for the connection's previous request", ctx.Err())
	}
	if err := ctx.Err(); err != nil {
		<-c.turn
		return nil, fmt.Errorf("weave: %w before the request was sent", err)
	}
	if c.isClosed() {
		<-c.turn
		return nil, ErrClosed
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	return func() {
		stop()
		<-c.turn
	}, nil
}

// send writes one request. Called during a turn.
func (c *Client) send(r *request) error {
	frame, err := frameRequest(r)
	if err != nil {
		return err
	}
	_, err = c.conn.Write(frame)
	return err
}

// recv reads and decodes one response. Called during a turn.
func (c *Client) recv() (*response, error) {
	body, err := readFrame(c.r, c.max)
	if err != nil {
		return nil, err
	}
	return decodeResponse(body)
}

// exchange sends r and reads the first response. Any failure but a request
// refused before sending closes the connection: its stream position is lost.
func (c *Client) exchange(ctx context.Context, r *request) (*response, error) {
	if err := c.send(r); err != nil {
		var tooLarge *RequestTooLargeError
		if errors.As(err, &tooLarge) {
			return nil, err
		}
		// The broker may have answered before closing (a ProtocolError);
		// that answer explains the failure better than EPIPE.
		resp, rerr := c.recv()
		c.Close()
		if rerr == nil && resp.kind == respError {
			return nil, resp.err
		}
		return nil, c.ioError(ctx, err)
	}
	resp, err := c.recv()
	if err != nil {
		c.Close()
		return nil, c.ioError(ctx, err)
	}
	if resp.kind == respError {
		if _, ok := resp.err.(*ProtocolError); ok {
			c.Close() // the broker closes after a protocol error
		}
		return nil, resp.err
	}
	return resp, nil
}

// call is one request and its single response, under ctx.
func (c *Client) call(ctx context.Context, r *request) (*response, error) {
	end, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	return c.exchange(ctx, r)
}

// ioError prefers the context's error when ctx interrupted the I/O.
func (c *Client) ioError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("weave: %w (the connection was closed)", ctxErr)
	}
	return err
}

// expect checks that resp is of kind want; anything else is a protocol
// violation by the broker and closes the connection.
func (c *Client) expect(resp *response, want responseKind, verb requestKind) error {
	if resp.kind == want {
		return nil
	}
	c.Close()
	return &DecodeError{Reason: fmt.Sprintf("the broker answered %s with %v, expected %v", verb, resp.kind, want)}
}

func (c *Client) simple(ctx context.Context, r *request, want responseKind) (*response, error) {
	resp, err := c.call(ctx, r)
	if err != nil {
		return nil, err
	}
	if err := c.expect(resp, want, r.kind); err != nil {
		return nil, err
	}
	return resp, nil
}

func (c *Client) ok(ctx context.Context, r *request) error {
	_, err := c.simple(ctx, r, respOK)
	return err
}

// ListModels returns the configured models with their defaults and bounds.
func (c *Client) ListModels(ctx context.Context) ([]ModelInfo, error) {
	resp, err := c.simple(ctx, &request{kind: reqListModels}, respModels)
	if err != nil {
		return nil, err
	}
	return resp.models, nil
}

// Status returns the daemon's state.
func (c *Client) Status(ctx context.Context) (StatusReport, error) {
	resp, err := c.simple(ctx, &request{kind: reqStatus}, respStatus)
	if err != nil {
		return StatusReport{}, err
	}
	return resp.status, nil
}

// Cancel cancels a queued or running job of the caller (admins: any job).
// An unknown, finished or foreign job id gets *InvalidParameterError with
// Field "job_id" in all three cases.
func (c *Client) Cancel(ctx context.Context, jobID uint64) error {
	return c.ok(ctx, &request{kind: reqCancel, jobID: jobID})
}

// Jobs lists the caller's own running and queued jobs, then the broker's
// history of the last ones that ended (JobFinished, JobFailed; newest
// first), for every tag of its uid: filter by JobInfo.Tag to separate end
// users.
func (c *Client) Jobs(ctx context.Context) ([]JobInfo, error) {
	resp, err := c.simple(ctx, &request{kind: reqJobs}, respJobs)
	if err != nil {
		return nil, err
	}
	return resp.jobs, nil
}

// Load loads a model into the worker (admin). It returns once loaded.
func (c *Client) Load(ctx context.Context, modelID string) error {
	return c.ok(ctx, &request{kind: reqLoad, modelID: modelID})
}

// Unload unloads the loaded model, if any (admin).
func (c *Client) Unload(ctx context.Context) error { return c.ok(ctx, &request{kind: reqUnload}) }

// Pin loads a model and keeps it loaded (admin).
func (c *Client) Pin(ctx context.Context, modelID string) error {
	return c.ok(ctx, &request{kind: reqPin, modelID: modelID})
}

// Unpin releases a pinned model (admin).
func (c *Client) Unpin(ctx context.Context, modelID string) error {
	return c.ok(ctx, &request{kind: reqUnpin, modelID: modelID})
}

// Drain refuses new jobs with *ShuttingDownError; queued jobs finish (admin).
func (c *Client) Drain(ctx context.Context) error { return c.ok(ctx, &request{kind: reqDrain}) }

// Resume undoes Drain (admin).
func (c *Client) Resume(ctx context.Context) error { return c.ok(ctx, &request{kind: reqResume}) }

// RotateKeys replaces the broker↔worker channel keys (admin).
func (c *Client) RotateKeys(ctx context.Context) error {
	return c.ok(ctx, &request{kind: reqRotateKeys})
}

// ChannelStats returns the shared-memory channel counters (admin).
func (c *Client) ChannelStats(ctx context.Context) (ChannelStatsReport, error) {
	resp, err := c.simple(ctx, &request{kind: reqChannelStats}, respChannelStats)
	if err != nil {
		return ChannelStatsReport{}, err
	}
	return resp.channel, nil
}

// AllJobs lists every user's jobs (admin).
func (c *Client) AllJobs(ctx context.Context) ([]JobInfo, error) {
	resp, err := c.simple(ctx, &request{kind: reqAllJobs}, respJobs)
	if err != nil {
		return nil, err
	}
	return resp.jobs, nil
}

// QuarantineClear lifts a model's quarantine (admin).
func (c *Client) QuarantineClear(ctx context.Context, modelID string) error {
	return c.ok(ctx, &request{kind: reqQuarantineClear, modelID: modelID})
}
