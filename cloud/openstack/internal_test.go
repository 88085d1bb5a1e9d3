package openstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/openstack/utils"

	"github.com/imagekeeper/imagekeeper/cloud"
)

func respErr(status int, body string, hdr ...string) error {
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	return gophercloud.ErrUnexpectedResponseCode{Actual: status, Body: []byte(body), ResponseHeader: h, Method: "GET", URL: "http://x/y"}
}

func TestClassify(t *testing.T) {
	nova409err := `{"conflictingRequest": {"code": 409, "message": "Cannot 'createImage' instance 1 while it is in vm_state error"}}`
	nova409task := `{"conflictingRequest": {"code": 409, "message": "Cannot 'createImage' instance 1 while it is in task_state image_snapshot_pending"}}`
	glance403 := `{"message": "Image 5 is protected and cannot be deleted.<br /><br />\n\n\n", "code": "403 Forbidden", "title": "Forbidden"}`
	cinder400 := `{"badRequest": {"code": 400, "message": "Invalid snapshot: Volume Snapshot status must be available or error, but current status is: creating"}}`
	quota403 := `{"forbidden": {"code": 403, "message": "Quota exceeded for snapshots: Requested 1, but already used 10 of 10 snapshots"}}`
	dial := &url.Error{Op: "Post", URL: "http://x", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}
	reset := &url.Error{Op: "Post", URL: "http://x", Err: &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}}
	timeout := &url.Error{Op: "Post", URL: "http://x", Err: context.DeadlineExceeded}
	tests := []struct {
		op     op
		err    error
		kind   error
		status int
		reason string
	}{
		{opCreateImage, respErr(409, nova409err), cloud.ErrBusy, 409, "while it is in vm_state error"},
		{opCreateImage, respErr(409, nova409task), cloud.ErrBusy, 409, "task_state image_snapshot_pending"},
		{opCreateImage, respErr(400, `{"badRequest": {"code": 400, "message": "Invalid input"}}`), cloud.ErrInvalid, 400, "Invalid input"},
		{opCreateImage, respErr(404, `{"itemNotFound": {"code": 404, "message": "Instance 1 could not be found."}}`), cloud.ErrNotFound, 404, "could not be found"},
		{opCreateImage, respErr(403, quota403), cloud.ErrQuota, 403, "Quota exceeded"},
		{opCreateImage, respErr(403, `{"forbidden": {"code": 403, "message": "Policy doesn't allow it"}}`), cloud.ErrInvalid, 403, "Policy"},
		{opCreateImage, respErr(413, `{"overLimit": {"code": 413, "message": "Maximum number of metadata items exceeds 128"}}`), cloud.ErrQuota, 413, "Maximum"},
		{opCreateImage, respErr(503, "Service Unavailable"), cloud.ErrUnknownOutcome, 503, "Service Unavailable"},
		{opCreateImage, respErr(500, `{"computeFault": {"code": 500, "message": "Unexpected API Error."}}`), cloud.ErrUnknownOutcome, 500, "Unexpected API Error."},
		{opCreateImage, respErr(429, "Too Many Requests", "Retry-After", "1"), cloud.ErrUnavailable, 429, "Too Many Requests"},
		{opCreateImage, reset, cloud.ErrUnknownOutcome, 0, ""},
		{opCreateImage, timeout, cloud.ErrUnknownOutcome, 0, ""},
		{opCreateImage, dial, cloud.ErrUnavailable, 0, ""},
		{opGetServer, reset, cloud.ErrUnavailable, 0, ""},
		{opGetServer, respErr(503, ""), cloud.ErrUnavailable, 503, ""},
		{opGetImage, respErr(404, "404 Not Found\n\nNo image found with ID 5\n\n"), cloud.ErrNotFound, 404, "404 Not Found No image found with ID 5"},
		{opDeleteImage, respErr(403, glance403), cloud.ErrProtected, 403, "Image 5 is protected and cannot be deleted."},
		{opDeleteImage, respErr(409, `{"message": "Image 5 could not be deleted because it is in use"}`), cloud.ErrInUse, 409, "in use"},
		{opDeleteSnapshot, respErr(400, cinder400), cloud.ErrInUse, 400, "Invalid snapshot"},
		{opDeleteSnapshot, respErr(404, `{"itemNotFound": {"code": 404, "message": "Snapshot 7 could not be found."}}`), cloud.ErrNotFound, 404, "Snapshot 7"},
		{opListServers, respErr(401, `{"error": {"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}}`), cloud.ErrUnavailable, 401, "requires authentication"},
		{opListServers, gophercloud.ErrErrorAfterReauthentication{ErrOriginal: respErr(404, "")}, cloud.ErrNotFound, 404, ""},
		{opListServers, &gophercloud.ErrUnableToReauthenticate{ErrOriginal: respErr(401, ""), ErrReauth: errors.New("bad password")}, cloud.ErrUnavailable, 401, "re-authentication failed"},
		{opListServers, respErr(418, "teapot"), cloud.ErrInvalid, 418, "teapot"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/%d/%s", tc.op.name, tc.status, tc.kind), func(t *testing.T) {
			err := classify(tc.op, "id-1", tc.err)
			var ce *cloud.Error
			if !errors.As(err, &ce) {
				t.Fatalf("classify returned %T %v, want *cloud.Error", err, err)
			}
			if !errors.Is(err, tc.kind) || ce.Status != tc.status || ce.ID != "id-1" || ce.Op != tc.op.desc {
				t.Errorf("classify = %+v, want kind %v status %d", ce, tc.kind, tc.status)
			}
			if !strings.Contains(ce.Reason, tc.reason) {
				t.Errorf("reason %q does not contain %q", ce.Reason, tc.reason)
			}
			if strings.Contains(ce.Reason, "<br") {
				t.Errorf("reason keeps markup: %q", ce.Reason)
			}
		})
	}
	if classify(opGetImage, "x", nil) != nil {
		t.Error("classify(nil) != nil")
	}
	already := &cloud.Error{Op: "list servers", Kind: cloud.ErrInvalid}
	if got := classify(opListServers, "", fmt.Errorf("page: %w", already)); !errors.Is(got, cloud.ErrInvalid) {
		t.Errorf("an already classified error was reclassified: %v", got)
	}
	if err := classify(opCreateImage, "s", timeout); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the cause is lost: %v", err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1", time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"0", 0, true},
		{"Fri, 27 Nov 2026 10:00:30 GMT", 30 * time.Second, true},
		{"Fri, 27 Nov 2026 09:00:00 GMT", 0, true}, // in the past: now
		{"-5", 0, false},
		{"soon", 0, false},
		{"", 0, false},
		{"1.5", 0, false},
	}
	for _, tc := range tests {
		got, ok := parseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestChooseMicroversion(t *testing.T) {
	mv := func(min, max string) utils.SupportedMicroversions {
		var s utils.SupportedMicroversions
		s.MinMajor, s.MinMinor, _ = utils.ParseMicroversion(min)
		s.MaxMajor, s.MaxMinor, _ = utils.ParseMicroversion(max)
		return s
	}
	tests := []struct {
		min, max, want string
		err            bool
	}{
		{"2.1", "2.60", "2.45", false},  // Huawei ECS
		{"2.1", "2.104", "2.45", false}, // upstream master
		{"2.1", "2.45", "2.45", false},
		{"2.1", "2.44", "2.44", false},
		{"2.1", "2.26", "2.26", false},
		{"2.1", "2.25", "", true},
		{"2.1", "2.9", "", true}, // 2.9 < 2.26 numerically, not as text
		{"2.50", "2.90", "2.50", false},
	}
	for _, tc := range tests {
		got, err := chooseMicroversion(mv(tc.min, tc.max))
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("chooseMicroversion(%s..%s) = %q, %v; want %q (error %v)", tc.min, tc.max, got, err, tc.want, tc.err)
		}
		if err != nil && (!errors.Is(err, ErrMicroversion) || !strings.Contains(err.Error(), tc.max)) {
			t.Errorf("error %q should wrap ErrMicroversion and name the maximum", err)
		}
	}
}

func TestPropertyQuery(t *testing.T) {
	q := propertyQuery{base: images.ListOpts{Limit: 3}, properties: map[string]string{
		"imagekeeper_policy": "web daily", "imagekeeper_slot": "2026-01-01T02:30:00Z", "a&b": "c=d"}}
	s, err := q.ToImageListQuery()
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(s)
	if err != nil || !strings.HasPrefix(s, "?") {
		t.Fatalf("query %q: %v", s, err)
	}
	v := u.Query()
	if v.Get("limit") != "3" || v.Get("imagekeeper_policy") != "web daily" || v.Get("imagekeeper_slot") != "2026-01-01T02:30:00Z" || v.Get("a&b") != "c=d" || len(v) != 4 {
		t.Errorf("query %q decodes to %v", s, v)
	}
	if s, _ := (propertyQuery{}).ToImageListQuery(); s != "" {
		t.Errorf("empty query = %q", s)
	}
}

func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	c := &Client{baseDelay: 100 * time.Millisecond, maxDelay: time.Second}
	for n := uint(1); n <= 8; n++ {
		full := c.baseDelay << (n - 1)
		if full > c.maxDelay {
			full = c.maxDelay
		}
		for range 50 {
			d := c.backoff(n)
			if d < full/2 || d > full {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, d, full/2, full)
			}
		}
	}
}

func TestFaultMessage(t *testing.T) {
	long := strings.Repeat("x", 2000)
	if got := faultMessage([]byte(long)); len(got) > 520 {
		t.Errorf("long body kept %d bytes", len(got))
	}
	if got := faultMessage([]byte(`{"error": {"message": "The request you have made requires authentication.", "code": 401}}`)); got != "The request you have made requires authentication." {
		t.Errorf("keystone message = %q", got)
	}
	if got := faultMessage(nil); got != "" {
		t.Errorf("empty body = %q", got)
	}
}
