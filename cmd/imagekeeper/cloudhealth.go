package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// cloudHealth follows the cloud's last answers for /readyz and imagekeeper_cloud_up.
// The cloud is "up" when its last request was answered (any answer counts, a 404 or
// a 409 too: the cloud works and said no) and "down" when the last request got no
// answer, a 5xx, or a 401 (credentials refused): the state a run would meet now.
// One failure turns it down and the first success turns it up again; a timestamp
// of the change says since when. Requests cancelled by imagekeeper itself (a drain,
// a client that hung up) say nothing about the cloud and are not counted.
type cloudHealth struct {
	now func() time.Time
	// onChange, when set, is called with the new state on every change (metrics).
	onChange func(up bool)

	mu      sync.Mutex
	up      bool
	since   time.Time // when the current state began
	reason  string    // why it is down
	checked time.Time // the last recorded answer or failure

	probing sync.Mutex // one probe at a time
}

// newCloudHealth starts down: no answer yet.
func newCloudHealth(now func() time.Time, onChange func(up bool)) *cloudHealth {
	if now == nil {
		now = time.Now
	}
	h := &cloudHealth{now: now, onChange: onChange, since: now(), reason: "not connected yet"}
	if onChange != nil {
		onChange(false)
	}
	return h
}

// unreachable reports whether err means the cloud did not work: no answer, a 5xx,
// throttling past the retries, or a refused token (the adapter maps all of them to
// ErrUnavailable, and a 5xx or a timeout of createImage to ErrUnknownOutcome).
func unreachable(err error) bool {
	return errors.Is(err, cloud.ErrUnavailable) || errors.Is(err, cloud.ErrUnknownOutcome)
}

// record takes the result of one request made under ctx.
func (h *cloudHealth) record(ctx context.Context, err error) {
	switch {
	case err != nil && ctx.Err() != nil:
		// Cancelled by us: no news about the cloud.
	case err != nil && unreachable(err):
		h.set(false, err.Error())
	default:
		h.set(true, "")
	}
}

// fail marks the cloud down for reason (a failed connection at start).
func (h *cloudHealth) fail(reason string) { h.set(false, reason) }

func (h *cloudHealth) set(up bool, reason string) {
	now := h.now()
	h.mu.Lock()
	changed := up != h.up
	h.checked = now
	h.reason = reason
	if changed {
		h.up, h.since = up, now
	}
	h.mu.Unlock()
	if changed && h.onChange != nil {
		h.onChange(up)
	}
}

// status returns the state, the reason it is down, since when, and when the cloud
// was last heard of.
func (h *cloudHealth) status() (up bool, reason string, since, checked time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.up, h.reason, h.since, h.checked
}

// check is the /readyz check. When nothing was heard of the cloud for longer than
// stale (a quiet daemon between slots), it first asks the cloud with probe, so that
// an outage shows within stale even when no slot runs, and a recovery shows without
// waiting for the next slot. probe is nil while the daemon is not connected.
func (h *cloudHealth) check(ctx context.Context, stale time.Duration, probe func(context.Context) error) error {
	if _, _, _, checked := h.status(); probe != nil && h.now().Sub(checked) > stale && h.probing.TryLock() {
		err := probe(ctx)
		switch {
		case err == nil || !unreachable(err):
			h.set(true, "")
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			// The probe's own deadline: the cloud did not answer in time.
			h.set(false, "no answer to a probe within the readiness timeout")
		case ctx.Err() == nil:
			h.set(false, err.Error())
		}
		h.probing.Unlock()
	}
	up, reason, since, _ := h.status()
	if up {
		return nil
	}
	return fmt.Errorf("down since %s: %s", since.UTC().Format(time.RFC3339), reason)
}

// probeImageID is an image id no cloud has: asking for it costs one cheap GET whose
// 404 proves the cloud answers.
const probeImageID = "00000000-0000-0000-0000-000000000000"

// healthCloud records the result of every call in a cloudHealth.
type healthCloud struct {
	cloud.Cloud
	h *cloudHealth
}

func (w *healthCloud) ListServers(ctx context.Context, sel cloud.Selector) ([]cloud.Server, error) {
	v, err := w.Cloud.ListServers(ctx, sel)
	w.h.record(ctx, err)
	return v, err
}

func (w *healthCloud) GetServer(ctx context.Context, id string) (cloud.Server, error) {
	v, err := w.Cloud.GetServer(ctx, id)
	w.h.record(ctx, err)
	return v, err
}

func (w *healthCloud) CreateImage(ctx context.Context, serverID, name string, md map[string]string) (string, error) {
	v, err := w.Cloud.CreateImage(ctx, serverID, name, md)
	w.h.record(ctx, err)
	return v, err
}

func (w *healthCloud) GetImage(ctx context.Context, id string) (cloud.Image, error) {
	v, err := w.Cloud.GetImage(ctx, id)
	w.h.record(ctx, err)
	return v, err
}

func (w *healthCloud) ListImages(ctx context.Context, props map[string]string) ([]cloud.Image, error) {
	v, err := w.Cloud.ListImages(ctx, props)
	w.h.record(ctx, err)
	return v, err
}

func (w *healthCloud) DeleteImage(ctx context.Context, id string) error {
	err := w.Cloud.DeleteImage(ctx, id)
	w.h.record(ctx, err)
	return err
}

func (w *healthCloud) GetSnapshot(ctx context.Context, id string) (cloud.Snapshot, error) {
	v, err := w.Cloud.GetSnapshot(ctx, id)
	w.h.record(ctx, err)
	return v, err
}

func (w *healthCloud) ListSnapshots(ctx context.Context) ([]cloud.Snapshot, error) {
	v, err := w.Cloud.ListSnapshots(ctx)
	w.h.record(ctx, err)
	return v, err
}

func (w *healthCloud) DeleteSnapshot(ctx context.Context, id string) error {
	err := w.Cloud.DeleteSnapshot(ctx, id)
	w.h.record(ctx, err)
	return err
}

func (w *healthCloud) CreateServer(ctx context.Context, req cloud.BootRequest) (string, error) {
	v, err := w.Cloud.CreateServer(ctx, req)
	w.h.record(ctx, err)
	return v, err
}

func (w *healthCloud) DeleteServer(ctx context.Context, id string) error {
	err := w.Cloud.DeleteServer(ctx, id)
	w.h.record(ctx, err)
	return err
}

func (w *healthCloud) ConsoleOutput(ctx context.Context, id string, lines int) (string, error) {
	v, err := w.Cloud.ConsoleOutput(ctx, id, lines)
	w.h.record(ctx, err)
	return v, err
}

func (w *healthCloud) GetVolume(ctx context.Context, id string) (cloud.Volume, error) {
	v, err := w.Cloud.GetVolume(ctx, id)
	w.h.record(ctx, err)
	return v, err
}

func (w *healthCloud) DeleteVolume(ctx context.Context, id string) error {
	err := w.Cloud.DeleteVolume(ctx, id)
	w.h.record(ctx, err)
	return err
}
