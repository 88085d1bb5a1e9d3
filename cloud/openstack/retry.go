package openstack

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
)

// retry is gophercloud's RetryFunc: it is called after every failed request and
// the request is sent again when it returns nil. gophercloud's RetryBackoffFunc only
// sees 429 and 498, so all the rules live here instead:
//
//   - 429: any request, createImage included, after Retry-After (or the backoff).
//     Nova has no rate limiter of its own; a 429 comes from a gateway that refused
//     the request before any service saw it, so repeating it cannot make a second
//     image.
//   - 500, 502, 503, 504 and connection errors: idempotent requests only (GET, HEAD,
//     DELETE, PUT and token requests), after Retry-After when a 503 carries one, else
//     exponential backoff with jitter.
//   - A request that never left (the connection could not be dialled): any request.
//   - Nothing else, and never once the context is done or the wait would outlive
//     the call's deadline.
//
// On giving up it returns the last error unchanged, so classify sees what the cloud
// last said (a 429 that was never followed by a retry still means "not created").
func (c *Client) retry(ctx context.Context, method, rawURL string, _ *gophercloud.RequestOpts, err error, failCount uint) error {
	if int(failCount) > c.maxRetries || ctx.Err() != nil {
		return err
	}
	idempotent := method != http.MethodPost && method != http.MethodPatch || isTokenURL(rawURL)
	delay := c.backoff(failCount)
	status := 0
	var rc gophercloud.ErrUnexpectedResponseCode
	switch {
	case errors.As(err, &rc):
		status = rc.Actual
		switch {
		case status == http.StatusTooManyRequests:
		case idempotent && (status == 500 || status == 502 || status == 503 || status == 504):
		default:
			return err
		}
		if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
			if d, ok := parseRetryAfter(rc.ResponseHeader.Get("Retry-After"), time.Now()); ok {
				// Never earlier than asked; a little jitter on top spreads a herd.
				delay = d + time.Duration(rand.Int64N(int64(c.baseDelay)/4+1))
			}
		}
	case notSent(err):
	case idempotent && isConnectionError(err):
	default:
		return err
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
		c.log.Warn("cloud request failed, no time left to retry",
			"method", method, "path", pathOf(rawURL), "status", status, "attempt", failCount, "delay", delay)
		return err
	}
	c.log.Info("retrying cloud request",
		"method", method, "path", pathOf(rawURL), "status", status, "attempt", failCount, "delay", delay, "error", errText(err, status))
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return err
	case <-t.C:
		return nil
	}
}

// backoff is the delay before retry n (1-based): base*2^(n-1) capped at maxDelay,
// with "equal jitter" (half fixed, half random) so that it always grows.
func (c *Client) backoff(n uint) time.Duration {
	d := c.baseDelay
	for i := uint(1); i < n && d < c.maxDelay; i++ {
		d *= 2
	}
	if d > c.maxDelay {
		d = c.maxDelay
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

// notSent reports whether err proves the request never reached the server: the
// TCP connection could not be made.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// isConnectionError reports transport failures (reset, EOF, timeouts of one
// connection) as opposed to answers from the cloud or our own context ending.
func isConnectionError(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ue *url.Error
	var ne net.Error
	return errors.As(err, &ue) || errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF)
}

func isTokenURL(rawURL string) bool {
	return strings.HasSuffix(pathOf(rawURL), "/auth/tokens")
}

// pathOf drops the query and host, which keeps logs short (and free of anything a
// query might carry).
func pathOf(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return ""
	}
	return u.Path
}

func errText(err error, status int) string {
	if status != 0 {
		return http.StatusText(status)
	}
	return err.Error()
}
