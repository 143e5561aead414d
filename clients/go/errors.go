package weave

import (
	"errors"
	"fmt"
	"time"
)

// ErrorCode is the stable numeric code of a daemon error: its wire
// variant index, which never changes meaning.
type ErrorCode uint32

const (
	CodeInvalidParameter ErrorCode = iota
	CodeUnknownModel
	CodeBusy
	CodeRateLimited
	CodeCancelled
	CodeTimedOut
	CodeWorkerCrashed
	CodeNotPermitted
	CodeModelQuarantined
	CodeProtocolError
	CodeShuttingDown
	CodeInternal
	CodeModelUnavailable // added in protocol version 2
	errorCodeCount
)

var errorCodeNames = [errorCodeCount]string{
	"invalid_parameter", "unknown_model", "busy", "rate_limited", "cancelled", "timed_out",
	"worker_crashed", "not_permitted", "model_quarantined", "protocol_error", "shutting_down",
	"internal", "model_unavailable",
}

// String is the code's stable snake_case name (as in the broker's audit log).
func (c ErrorCode) String() string {
	if c < errorCodeCount {
		return errorCodeNames[c]
	}
	return fmt.Sprintf("ErrorCode(%d)", uint32(c))
}

// DaemonError is an error the broker sent (Response::Error). Every code has
// its own type, so callers use errors.As with the one they handle:
//
//	var busy *weave.BusyError
//	if errors.As(err, &busy) { time.Sleep(busy.RetryAfter()) }
//
// or errors.As with a DaemonError to handle any of them. The messages are
// this client's own words: the wire carries only the code and its fields.
type DaemonError interface {
	error
	Code() ErrorCode
	// Retryable reports whether the same request can succeed later.
	Retryable() bool
}

// InvalidParameterError: a request field is out of bounds. Field names the
// field; Allowed describes the accepted values in words (never the value
// sent). Neither is meant to be parsed.
type InvalidParameterError struct{ Field, Allowed string }

// UnknownModelError: no model with this id is configured.
type UnknownModelError struct{ ModelID string }

// BusyError: a queue is full and nothing was queued.
type BusyError struct{ RetryAfterMs uint32 }

// RateLimitedError: this uid sent too many requests.
type RateLimitedError struct{ RetryAfterMs uint32 }

// CancelledError: the job was cancelled (Cancel, an admin, or a drain).
type CancelledError struct{}

// TimedOutError: the queue deadline or the job's time limit passed.
type TimedOutError struct{}

// WorkerCrashedError: the worker failed during the job and was restarted.
type WorkerCrashedError struct{}

// NotPermittedError: an admin verb from a Client-role connection.
type NotPermittedError struct{ Verb string }

// ModelQuarantinedError: the model crashed the worker repeatedly.
type ModelQuarantinedError struct{}

// ProtocolError: the broker did not accept what this side sent (framing,
// encoding, version, sequence). The broker closes the connection after it.
type ProtocolError struct{ Reason string }

// ShuttingDownError: the broker is draining or stopping.
type ShuttingDownError struct{}

// InternalError: a broker fault; details are only in the broker's log.
type InternalError struct{}

// ModelUnavailableError: the model's files cannot be used now (missing,
// unreadable, refused at load); ListModels shows it Available false, and
// admins its Reason.
type ModelUnavailableError struct{}

func (e *InvalidParameterError) Error() string {
	return fmt.Sprintf("invalid %s: must be %s; fix the request and send it again", e.Field, e.Allowed)
}
func (e *UnknownModelError) Error() string {
	return fmt.Sprintf("unknown model %q; list the models and use one of their ids", e.ModelID)
}
func (e *BusyError) Error() string {
	return fmt.Sprintf("the broker's queue is full; retry in %d ms", e.RetryAfterMs)
}
func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("too many requests from this user; retry in %d ms", e.RetryAfterMs)
}
func (*CancelledError) Error() string { return "the job was cancelled" }
func (*TimedOutError) Error() string {
	return "the job ran out of time; retry with fewer steps, a smaller image or a smaller batch"
}
func (*WorkerCrashedError) Error() string {
	return "the generation worker failed during this job and was restarted; retry, and if it keeps failing ask an administrator to check the broker log"
}
func (e *NotPermittedError) Error() string {
	return fmt.Sprintf("%q needs the admin role; ask an administrator to run it", e.Verb)
}
func (*ModelQuarantinedError) Error() string {
	return "this model is quarantined after repeated worker crashes; use another model, or ask an administrator to clear the quarantine"
}
func (e *ProtocolError) Error() string {
	return fmt.Sprintf("the broker refused the request: protocol error (%s); use a client for protocol version %d", e.Reason, ProtocolVersion)
}
func (*ShuttingDownError) Error() string {
	return "the broker is not accepting new jobs (draining or shutting down); retry later"
}
func (*InternalError) Error() string {
	return "internal error in the broker; an administrator can find the details in its log"
}
func (*ModelUnavailableError) Error() string {
	return "this model is not available on this daemon right now; use another model, or ask an administrator (the model list says why)"
}

func (*InvalidParameterError) Code() ErrorCode { return CodeInvalidParameter }
func (*UnknownModelError) Code() ErrorCode     { return CodeUnknownModel }
func (*BusyError) Code() ErrorCode             { return CodeBusy }
func (*RateLimitedError) Code() ErrorCode      { return CodeRateLimited }
func (*CancelledError) Code() ErrorCode        { return CodeCancelled }
func (*TimedOutError) Code() ErrorCode         { return CodeTimedOut }
func (*WorkerCrashedError) Code() ErrorCode    { return CodeWorkerCrashed }
func (*NotPermittedError) Code() ErrorCode     { return CodeNotPermitted }
func (*ModelQuarantinedError) Code() ErrorCode { return CodeModelQuarantined }
func (*ProtocolError) Code() ErrorCode         { return CodeProtocolError }
func (*ShuttingDownError) Code() ErrorCode     { return CodeShuttingDown }
func (*InternalError) Code() ErrorCode         { return CodeInternal }
func (*ModelUnavailableError) Code() ErrorCode { return CodeModelUnavailable }

func (*InvalidParameterError) Retryable() bool { return false }
func (*UnknownModelError) Retryable() bool     { return false }
func (*BusyError) Retryable() bool             { return true }
func (*RateLimitedError) Retryable() bool      { return true }
func (*CancelledError) Retryable() bool        { return false }
func (*TimedOutError) Retryable() bool         { return false }
func (*WorkerCrashedError) Retryable() bool    { return true }
func (*NotPermittedError) Retryable() bool     { return false }
func (*ModelQuarantinedError) Retryable() bool { return false }
func (*ProtocolError) Retryable() bool         { return false }
func (*ShuttingDownError) Retryable() bool     { return true }
func (*InternalError) Retryable() bool         { return false }
func (*ModelUnavailableError) Retryable() bool { return false }

// RetryAfter is the broker's hint for when to retry.
func (e *BusyError) RetryAfter() time.Duration {
	return time.Duration(e.RetryAfterMs) * time.Millisecond
}

// RetryAfter is the broker's hint for when to retry.
func (e *RateLimitedError) RetryAfter() time.Duration {
	return time.Duration(e.RetryAfterMs) * time.Millisecond
}

// Errors of this side, not sent by the broker.

// ErrClosed is returned by calls on a Client after Close, or after an
// error that left the connection's stream position unknown (a cancelled
// context in the middle of a response, a broken frame). Dial again.
var ErrClosed = errors.New("weave: the connection is closed; dial the broker again")

// RefusedError: the broker closed the connection before answering Hello,
// without a byte: it does that only to a uid it does not permit. (A
// permitted caller over a connection limit gets *BusyError from Dial.)
type RefusedError struct{ Socket string }

func (e *RefusedError) Error() string {
	return fmt.Sprintf("the broker at %s closed the connection without answering: this user is not permitted to use it "+
		"(in system mode, ask an administrator to add you to the client group)", e.Socket)
}

// IdentityError: the socket or the process behind it is not the broker
// this client trusts, so nothing was sent.
type IdentityError struct {
	Socket string
	Reason string
}

func (e *IdentityError) Error() string {
	return fmt.Sprintf("refusing to talk to %s: %s", e.Socket, e.Reason)
}

// DecodeError: a response was malformed (not canonical, out of range,
// trailing bytes, unknown variant, unexpected for the request). The
// connection is closed after it.
type DecodeError struct {
	Offset int
	Reason string
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("malformed response from the broker at byte %d: %s; the client and the daemon disagree on protocol version %d", e.Offset, e.Reason, ProtocolVersion)
}

// FrameTooLargeError: a response announced more bytes than the Dialer's
// MaxResponseFrame. The connection is closed.
type FrameTooLargeError struct{ Len, Max uint64 }

func (e *FrameTooLargeError) Error() string {
	return fmt.Sprintf("the broker sent a frame of %d bytes, over this client's limit of %d; raise Dialer.MaxResponseFrame for larger images", e.Len, e.Max)
}

// RequestTooLargeError: the request would exceed MaxRequestFrame (or, for
// a Generate with InitImage, MaxImageRequestFrame); nothing was sent and
// the connection stays usable.
type RequestTooLargeError struct{ Len, Max int }

func (e *RequestTooLargeError) Error() string {
	if e.Max > MaxRequestFrame {
		return fmt.Sprintf("the image request is %d bytes, over the most any broker accepts (%d); send smaller PNGs", e.Len, e.Max)
	}
	return fmt.Sprintf("the request is %d bytes, over the broker's limit of %d; shorten the prompts", e.Len, MaxRequestFrame)
}

// daemonError builds the typed error for a code and its fields.
func daemonErrorFor(d *decoder) DaemonError {
	switch ErrorCode(d.variant(uint32(errorCodeCount), "ErrorCode")) {
	case CodeInvalidParameter:
		return &InvalidParameterError{Field: d.str("field"), Allowed: d.str("allowed")}
	case CodeUnknownModel:
		return &UnknownModelError{ModelID: d.str("model_id")}
	case CodeBusy:
		return &BusyError{RetryAfterMs: d.u32("retry_after_ms")}
	case CodeRateLimited:
		return &RateLimitedError{RetryAfterMs: d.u32("retry_after_ms")}
	case CodeCancelled:
		return &CancelledError{}
	case CodeTimedOut:
		return &TimedOutError{}
	case CodeWorkerCrashed:
		return &WorkerCrashedError{}
	case CodeNotPermitted:
		return &NotPermittedError{Verb: d.str("verb")}
	case CodeModelQuarantined:
		return &ModelQuarantinedError{}
	case CodeProtocolError:
		return &ProtocolError{Reason: d.str("reason")}
	case CodeShuttingDown:
		return &ShuttingDownError{}
	case CodeInternal:
		return &InternalError{}
	case CodeModelUnavailable:
		return &ModelUnavailableError{}
	}
	// Unreachable: variant() rejected unknown codes and left d.err set.
	return &InternalError{}
}

// encodeDaemonError writes a code and its fields (the broker's side; used
// by the conformance tests and the fuzz round trip).
func encodeDaemonError(e *encoder, err DaemonError) {
	e.variant(uint32(err.Code()))
	switch err := err.(type) {
	case *InvalidParameterError:
		e.str(err.Field)
		e.str(err.Allowed)
	case *UnknownModelError:
		e.str(err.ModelID)
	case *BusyError:
		e.u32(err.RetryAfterMs)
	case *RateLimitedError:
		e.u32(err.RetryAfterMs)
	case *NotPermittedError:
		e.str(err.Verb)
	case *ProtocolError:
		e.str(err.Reason)
	}
}
