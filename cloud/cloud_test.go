package cloud_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// TestSelectorMatchesNovaSemantics uses the servers and answers captured from a
// real Nova in reference/nova-responses.md: Matches must agree with Nova's own
// filters, because the adapter re-checks Nova's results with it.
func TestSelectorMatchesNovaSemantics(t *testing.T) {
	servers := map[string][]string{
		"s1": {"backup", "daily"},
		"s2": {"backup", "weekly"},
		"s3": {"other"},
		"v":  {"backup", "bfv"},
	}
	tests := []struct {
		sel  cloud.Selector
		want string
	}{
		{cloud.Selector{Tags: []string{"backup", "daily"}}, "s1"},
		{cloud.Selector{Tags: []string{"backup"}}, "s1 s2 v"},
		{cloud.Selector{TagsAny: []string{"daily", "weekly"}}, "s1 s2"},
		{cloud.Selector{TagsAny: []string{"other", "bfv"}}, "s3 v"},
		{cloud.Selector{ExcludeTags: []string{"daily", "bfv"}}, "s2 s3"}, // Nova's not-tags-any
		{cloud.Selector{Tags: []string{"backup"}, TagsAny: []string{"weekly", "bfv"}}, "s2 v"},
		{cloud.Selector{}, "s1 s2 s3 v"},
	}
	for _, tc := range tests {
		var got []string
		for _, name := range []string{"s1", "s2", "s3", "v"} {
			if tc.sel.Matches(servers[name], "nova") {
				got = append(got, name)
			}
		}
		if g := strings.Join(got, " "); g != tc.want {
			t.Errorf("%+v matches %q, want %q", tc.sel, g, tc.want)
		}
	}
}

func TestSelectorMatchesAvailabilityZone(t *testing.T) {
	sel := cloud.Selector{Tags: []string{"backup"}, AvailabilityZones: []string{"az1", "az3"}}
	for _, tc := range []struct {
		tags []string
		az   string
		want bool
	}{
		{[]string{"backup"}, "az1", true},
		{[]string{"backup"}, "az3", true},
		{[]string{"backup"}, "az2", false},
		{[]string{"backup"}, "", false},
		{nil, "az1", false},
	} {
		if got := sel.Matches(tc.tags, tc.az); got != tc.want {
			t.Errorf("Matches(%v, %q) = %v, want %v", tc.tags, tc.az, got, tc.want)
		}
	}
	if !(cloud.Selector{}).Matches(nil, "") {
		t.Error("the empty selector must match everything")
	}
}

func TestErrorMatchesKindAndCause(t *testing.T) {
	cause := errors.New("connection reset by peer")
	err := fmt.Errorf("run slot: %w", &cloud.Error{Op: "create image", ID: "srv-1", Status: 503, Kind: cloud.ErrUnknownOutcome, Reason: "Service Unavailable", Err: cause})
	if !errors.Is(err, cloud.ErrUnknownOutcome) || !errors.Is(err, cause) || errors.Is(err, cloud.ErrBusy) {
		t.Errorf("errors.Is does not follow kind and cause: %v", err)
	}
	if want := "run slot: create image srv-1: outcome unknown (HTTP 503): Service Unavailable: connection reset by peer"; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
	if cloud.Retryable(err) {
		t.Error("unknown outcome must not be Retryable")
	}
	if got := cloud.Reason(err); got != "Service Unavailable" {
		t.Errorf("Reason = %q", got)
	}
	if got := cloud.Reason(cause); got != cause.Error() {
		t.Errorf("Reason(plain) = %q", got)
	}
	for _, k := range []error{cloud.ErrBusy, cloud.ErrUnavailable, cloud.ErrInUse} {
		if !cloud.Retryable(&cloud.Error{Op: "x", Kind: k}) {
			t.Errorf("%v not Retryable", k)
		}
	}
	for _, k := range []error{cloud.ErrNotFound, cloud.ErrProtected, cloud.ErrQuota, cloud.ErrInvalid} {
		if cloud.Retryable(&cloud.Error{Op: "x", Kind: k}) {
			t.Errorf("%v Retryable", k)
		}
	}
}
