package cloudtest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
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

// TestFakeCancelledContext checks that a call with a cancelled context fails with
// the context's error and is not counted: no request, no createImage attempt.
func TestFakeCancelledContext(t *testing.T) {
	f := cloudtest.NewFake(cloudtest.FakeOptions{})
	srv := f.AddServer(cloudtest.ServerSpec{Name: "web"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := map[cloudtest.Op]func() error{
		cloudtest.OpListServers:    func() error { _, err := f.ListServers(ctx, cloud.Selector{}); return err },
		cloudtest.OpGetServer:      func() error { _, err := f.GetServer(ctx, srv); return err },
		cloudtest.OpCreateImage:    func() error { _, err := f.CreateImage(ctx, srv, "x", nil); return err },
		cloudtest.OpGetImage:       func() error { _, err := f.GetImage(ctx, "i"); return err },
		cloudtest.OpListImages:     func() error { _, err := f.ListImages(ctx, nil); return err },
		cloudtest.OpDeleteImage:    func() error { return f.DeleteImage(ctx, "i") },
		cloudtest.OpGetSnapshot:    func() error { _, err := f.GetSnapshot(ctx, "s"); return err },
		cloudtest.OpListSnapshots:  func() error { _, err := f.ListSnapshots(ctx); return err },
		cloudtest.OpDeleteSnapshot: func() error { return f.DeleteSnapshot(ctx, "s") },
		cloudtest.OpCreateServer:   func() error { _, err := f.CreateServer(ctx, cloud.BootRequest{Name: "b"}); return err },
		cloudtest.OpDeleteServer:   func() error { return f.DeleteServer(ctx, srv) },
		cloudtest.OpConsoleOutput:  func() error { _, err := f.ConsoleOutput(ctx, srv, 10); return err },
		cloudtest.OpGetVolume:      func() error { _, err := f.GetVolume(ctx, "v"); return err },
		cloudtest.OpDeleteVolume:   func() error { return f.DeleteVolume(ctx, "v") },
	}
	for op, call := range calls {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: err %v, want context.Canceled", op, err)
		}
		if n := f.Requests(op); n != 0 {
			t.Errorf("%s: %d requests counted for a cancelled call", op, n)
		}
	}
	if n := f.CreateImageCalls(srv); n != 0 {
		t.Errorf("CreateImageCalls = %d after a cancelled createImage", n)
	}
}
