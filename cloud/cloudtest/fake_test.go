package cloudtest_test

import (
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/cloudtest"
)

// TestFakeContract runs the contract suite against the in-memory Fake, so that the
// Fake other packages test with behaves like the real cloud does.
func TestFakeContract(t *testing.T) {
	cloudtest.Run(t, func(t *testing.T, _ cloudtest.EnvOptions) cloudtest.Env {
		base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		f := cloudtest.NewFake(cloudtest.FakeOptions{Now: func() time.Time { return base }})
		return cloudtest.Env{Cloud: f, Ctl: f}
	})
}
