// Package openstack implements cloud.Cloud on OpenStack (Nova, Glance v2, Cinder v3)
// with gophercloud v2.
//
// What it adds on top of gophercloud, and why:
//   - Credentials come from clouds.yaml (OS_CLOUD, OS_CLIENT_CONFIG_FILE), and
//     re-authentication is switched on, because clouds.Parse drops allow_reauth and
//     a daemon would otherwise die with 401 once its first token expires.
//   - The compute microversion is negotiated from Nova's version document: 2.45 when
//     the cloud offers it, else the highest one, and never below 2.26, because below
//     2.26 Nova silently ignores tag filters and lists every server (and does not
//     even return the tags needed to filter client-side). New refuses such a cloud
//     with ErrMicroversion.
//   - Every call has a deadline (Options.RequestTimeout, Options.CreateImageTimeout).
//   - Idempotent requests (GET, DELETE, token requests) are retried with exponential
//     backoff and jitter on 5xx and connection errors; any request is retried on 429,
//     honouring Retry-After. createImage is never retried after it may have reached
//     Nova: a timeout, a reset or a 5xx is reported as cloud.ErrUnknownOutcome.
//   - HTTP answers become cloud sentinel errors in exactly one function (classify).
//   - Every HTTP exchange is reported to Options.Observe.
package openstack

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	gcopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"
	"github.com/gophercloud/gophercloud/v2/openstack/utils"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// Defaults of Options fields left zero.
const (
	DefaultRequestTimeout     = 60 * time.Second
	DefaultCreateImageTimeout = 3 * time.Minute
	DefaultMaxRetries         = 4
	DefaultRetryBaseDelay     = 500 * time.Millisecond
	DefaultRetryMaxDelay      = 15 * time.Second
)

// Compute microversions that matter to imagekeeper.
const (
	// MinMicroversion is the lowest compute microversion New accepts: server tag
	// filters and the tags field exist from 2.26 on.
	MinMicroversion = "2.26"
	// PreferredMicroversion returns the new image id in the createImage body.
	PreferredMicroversion = "2.45"
)

// ErrMicroversion is returned by New when the compute API cannot speak a
// microversion imagekeeper can use safely.
var ErrMicroversion = errors.New("unsupported compute microversion")

// ErrAuthentication is matched by the error New returns when Keystone refuses the
// credentials (401). Its message names the user and the auth URL, never the
// response body: an operator must read "wrong password", not a JSON dump.
var ErrAuthentication = errors.New("authentication failed")

// Request describes one HTTP exchange with the cloud, for metrics.
type Request struct {
	// Service is "identity", "compute", "image" or "volume".
	Service string
	// Operation is a bounded name such as "list_servers", "create_image" or "token".
	Operation string
	// Status is the HTTP status code, 0 when no response arrived.
	Status int
	// Duration is the time until the response headers arrived (or the error).
	Duration time.Duration
}

// Options configures New.
type Options struct {
	// CloudName is the clouds.yaml entry; empty means OS_CLOUD.
	CloudName string
	// Observe, when set, is called after every HTTP exchange (retries and token
	// requests included). It must be fast and safe for concurrent use.
	Observe func(Request)
	// RequestTimeout bounds every call (all its retries and pages included) except
	// CreateImage. Zero means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// CreateImageTimeout bounds CreateImage, which for a volume-backed server does
	// quiesce and Cinder work inside the request. Zero means DefaultCreateImageTimeout.
	CreateImageTimeout time.Duration
	// MaxRetries is how many times one request may be retried. Zero means
	// DefaultMaxRetries; negative disables retries.
	MaxRetries int
	// RetryBaseDelay is the first backoff delay, doubled on every retry up to
	// DefaultRetryMaxDelay. Zero means DefaultRetryBaseDelay.
	RetryBaseDelay time.Duration
	// PageSize is the limit asked for on list calls; zero leaves it to the cloud.
	PageSize int
	// ComputeMicroversion pins the compute microversion instead of negotiating it
	// (for tests and clouds with a broken version document). Below 2.26 ListServers
	// refuses selectors with tags rather than return unfiltered servers.
	ComputeMicroversion string
	// HTTPClient is the base client; nil means a clone of http.DefaultTransport. Its
	// Timeout should stay zero: per-call deadlines come from the context. The TLS
	// settings of clouds.yaml are applied when its Transport is an *http.Transport
	// (or nil).
	HTTPClient *http.Client
	// Logger receives retries and the microversion decision; nil discards.
	Logger *slog.Logger
	// ParseOptions are extra clouds.Parse options (e.g. clouds.WithCloudsYAML in tests).
	ParseOptions []clouds.ParseOption
}

// Client is a cloud.Cloud on OpenStack. It is safe for concurrent use.
type Client struct {
	compute *gophercloud.ServiceClient
	image   *gophercloud.ServiceClient
	volume  *gophercloud.ServiceClient

	log            *slog.Logger
	requestTimeout time.Duration
	createTimeout  time.Duration
	maxRetries     int
	baseDelay      time.Duration
	maxDelay       time.Duration
	pageSize       int
	microversion   string
	mvMajor        int
	mvMinor        int
}

var _ cloud.Cloud = (*Client)(nil)

// New reads the credentials of one clouds.yaml entry, authenticates, finds the
// compute, image and volume endpoints and negotiates the compute microversion.
func New(ctx context.Context, opts Options) (*Client, error) {
	c := &Client{
		log:            opts.Logger,
		requestTimeout: opts.RequestTimeout,
		createTimeout:  opts.CreateImageTimeout,
		maxRetries:     opts.MaxRetries,
		baseDelay:      opts.RetryBaseDelay,
		maxDelay:       DefaultRetryMaxDelay,
		pageSize:       opts.PageSize,
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.requestTimeout <= 0 {
		c.requestTimeout = DefaultRequestTimeout
	}
	if c.createTimeout <= 0 {
		c.createTimeout = DefaultCreateImageTimeout
	}
	switch {
	case c.maxRetries == 0:
		c.maxRetries = DefaultMaxRetries
	case c.maxRetries < 0:
		c.maxRetries = 0
	}
	if c.baseDelay <= 0 {
		c.baseDelay = DefaultRetryBaseDelay
	}
	if c.maxDelay < c.baseDelay {
		c.maxDelay = c.baseDelay
	}

	parseOpts := append([]clouds.ParseOption(nil), opts.ParseOptions...)
	if opts.CloudName != "" {
		parseOpts = append(parseOpts, clouds.WithCloudName(opts.CloudName))
	}
	if len(opts.ParseOptions) == 0 {
		// Where the caller did not say which file to read, find it here, so that a
		// wrong or missing name says which file was read and what it has.
		path, err := resolveCloud(cmp.Or(opts.CloudName, os.Getenv("OS_CLOUD")), os.Getenv)
		if err != nil {
			return nil, err
		}
		parseOpts = append(parseOpts, clouds.WithLocations(path))
	}
	ao, eo, tlsConfig, err := clouds.Parse(parseOpts...)
	if err != nil {
		return nil, fmt.Errorf("read clouds.yaml: %w", err)
	}
	// clouds.Parse never copies allow_reauth; without it every call fails with 401
	// once the first token expires.
	ao.AllowReauth = true

	httpClient := http.Client{}
	if opts.HTTPClient != nil {
		httpClient = *opts.HTTPClient
	}
	base := httpClient.Transport
	switch t := base.(type) {
	case nil:
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tlsConfig
		base = tr
	case *http.Transport:
		tr := t.Clone()
		if tlsConfig != nil {
			tr.TLSClientConfig = tlsConfig
		}
		base = tr
	default:
		c.log.Debug("custom HTTP transport: clouds.yaml TLS settings are not applied")
	}
	observer := &observingTransport{next: base, observe: opts.Observe}
	httpClient.Transport = observer

	pc, err := gcopenstack.NewClient(ao.IdentityEndpoint)
	if err != nil {
		return nil, fmt.Errorf("identity endpoint %q: %w", ao.IdentityEndpoint, err)
	}
	observer.identityBase = pc.IdentityBase
	pc.HTTPClient = httpClient
	// Set before Authenticate: the re-authentication client is a copy taken there.
	pc.RetryFunc = c.retry
	authCtx, cancel := context.WithTimeout(withOp(ctx, "identity", "token"), c.requestTimeout)
	defer cancel()
	if err := gcopenstack.Authenticate(authCtx, pc, ao); err != nil {
		return nil, authError(ao, err)
	}

	observer.discovering.Store(&opInfo{"compute", "versions"})
	if c.compute, err = gcopenstack.NewComputeV2(pc, eo); err != nil {
		return nil, endpointError(pc, eo, "compute", err)
	}
	observer.discovering.Store(&opInfo{"image", "versions"})
	if c.image, err = gcopenstack.NewImageV2(pc, eo); err != nil {
		return nil, endpointError(pc, eo, "image", err)
	}
	observer.discovering.Store(&opInfo{"volume", "versions"})
	if c.volume, err = gcopenstack.NewBlockStorageV3(pc, eo); err != nil {
		return nil, endpointError(pc, eo, "volume", err)
	}
	observer.discovering.Store(nil)

	mv := opts.ComputeMicroversion
	if mv == "" {
		vctx, cancel := context.WithTimeout(withOp(ctx, "compute", "versions"), c.requestTimeout)
		defer cancel()
		supported, err := utils.GetSupportedMicroversions(vctx, c.compute)
		if err != nil {
			return nil, fmt.Errorf("compute version document at %s: %w", c.compute.Endpoint, err)
		}
		if mv, err = chooseMicroversion(supported); err != nil {
			return nil, err
		}
	}
	if c.mvMajor, c.mvMinor, err = utils.ParseMicroversion(mv); err != nil {
		return nil, fmt.Errorf("compute microversion %q: %w", mv, err)
	}
	c.microversion = mv
	c.compute.Microversion = mv
	c.log.Info("compute microversion chosen", "microversion", mv, "pinned", opts.ComputeMicroversion != "")
	return c, nil
}

// authError words a failed authentication for the log: who, where and the status,
// without the response body gophercloud puts in its error text (Keystone's body
// says nothing more, and a proxy's may be a page of HTML).
func authError(ao gophercloud.AuthOptions, err error) error {
	who := firstOf(ao.Username, ao.UserID)
	kind := "user"
	if who == "" {
		who, kind = firstOf(ao.ApplicationCredentialName, ao.ApplicationCredentialID), "application credential"
	}
	rc, ok := responseError(err)
	if !ok {
		// No answer (refused, reset, timeout): the transport's words carry no body.
		return fmt.Errorf("authenticate %s %s at %s: %w", kind, who, ao.IdentityEndpoint, err)
	}
	if rc.Actual == http.StatusUnauthorized {
		return fmt.Errorf("%w for %s %s at %s: %d", ErrAuthentication, kind, who, ao.IdentityEndpoint, rc.Actual)
	}
	return fmt.Errorf("authenticate %s %s at %s: HTTP %d", kind, who, ao.IdentityEndpoint, rc.Actual)
}

func firstOf(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// chooseMicroversion picks 2.45 when the cloud supports it, the highest version
// otherwise, and refuses a cloud whose maximum is below 2.26.
func chooseMicroversion(s utils.SupportedMicroversions) (string, error) {
	maxV := fmt.Sprintf("%d.%d", s.MaxMajor, s.MaxMinor)
	minV := fmt.Sprintf("%d.%d", s.MinMajor, s.MinMinor)
	if !atLeast(s.MaxMajor, s.MaxMinor, 2, 26) {
		return "", fmt.Errorf("%w: the compute API supports microversions %s to %s; imagekeeper needs %s or later, "+
			"because below it Nova ignores server tag filters and would select every server", ErrMicroversion, minV, maxV, MinMicroversion)
	}
	switch {
	case !atLeast(s.MaxMajor, s.MaxMinor, 2, 45):
		return maxV, nil
	case atLeast(s.MinMajor, s.MinMinor, 2, 46):
		return minV, nil
	default:
		return PreferredMicroversion, nil
	}
}

func atLeast(major, minor, wantMajor, wantMinor int) bool {
	return major > wantMajor || (major == wantMajor && minor >= wantMinor)
}

// Microversion returns the compute microversion every compute request uses.
func (c *Client) Microversion() string { return c.microversion }

func (c *Client) callContext(ctx context.Context, service, op string) (context.Context, context.CancelFunc) {
	return context.WithTimeout(withOp(ctx, service, op), c.requestTimeout)
}

// opKey carries the service and operation of a call to the transport, so that
// Observe sees bounded names without parsing URLs.
type opKey struct{}

type opInfo struct{ service, operation string }

func withOp(ctx context.Context, service, operation string) context.Context {
	return context.WithValue(ctx, opKey{}, opInfo{service, operation})
}

// observingTransport reports every HTTP exchange to Observe.
type observingTransport struct {
	next    http.RoundTripper
	observe func(Request)
	// identityBase is Keystone's base URL: gophercloud's version discovery inside
	// Authenticate sends its GET without our context, so it is named by its URL.
	identityBase string
	// discovering names the service whose endpoint gophercloud is checking while New
	// builds the service clients: those version GETs carry no context either.
	discovering atomic.Pointer[opInfo]
}

// RoundTrip implements http.RoundTripper.
func (t *observingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.observe == nil {
		return t.next.RoundTrip(req)
	}
	info, _ := req.Context().Value(opKey{}).(opInfo)
	// Token requests happen inside any call (re-authentication), so they are named
	// by their path, not by the call that triggered them.
	if strings.HasSuffix(req.URL.Path, "/auth/tokens") {
		info = opInfo{"identity", "token"}
	}
	if info.service == "" && t.identityBase != "" && strings.HasPrefix(req.URL.String(), t.identityBase) {
		info = opInfo{"identity", "versions"}
	}
	if d := t.discovering.Load(); info.service == "" && d != nil {
		info = *d
	}
	if info.service == "" {
		info = opInfo{"unknown", "unknown"}
	}
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	status := 0
	if err == nil {
		status = resp.StatusCode
	}
	t.observe(Request{Service: info.service, Operation: info.operation, Status: status, Duration: time.Since(start)})
	return resp, err
}

// readLimited reads at most n bytes of a body; the rest is discarded.
func readLimited(r io.Reader, n int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, n))
	if err != nil {
		return b, err
	}
	_, _ = io.Copy(io.Discard, r)
	return b, nil
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.Atoi(v); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}
