package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/store"
)

// The state machine of one server in a slot run: from the row it has (or none)
// through the skips, the intent, the createImage call and its unknown outcomes, to
// a row to wait for or a result.

// Busy retries: a server with a task in progress (its own or someone else's
// snapshot, a resize...) or a createImage refused with 409 is looked at again
// within the slot, with backoff from RunnerOptions.BusyRetryInterval up to
// BusyRetryMaxInterval, until the slot's max_lateness has passed (at most
// MaxBusyRetry after the slot; MaxBusyRetry for a policy without a schedule). Only
// then is it skipped busy: on a daily policy a skip is a day without a backup.
const (
	DefaultBusyRetryInterval = 30 * time.Second
	BusyRetryMaxInterval     = 10 * time.Minute
	MaxBusyRetry             = 6 * time.Hour
)

// busyError is a server found busy: retryBusy retries it or skips it.
type busyError struct {
	res    ServerResult
	detail string
}

func (e busyError) Error() string { return "server busy: " + e.detail }

// busyDeadline is the last moment a busy server of this run is looked at again.
func (sr *slotRun) busyDeadline() time.Time {
	bound := MaxBusyRetry
	if sch := sr.p.Schedule; sch != nil && sch.MaxLateness > 0 && sch.MaxLateness < bound {
		bound = sch.MaxLateness
	}
	return sr.slot.Add(bound)
}

// retryBusy is called when imageServer found s busy: it waits with backoff, reads the
// server again and runs imageServer again, while it is busy and busyDeadline has not
// passed; then the server is skipped busy.
func (sr *slotRun) retryBusy(ctx context.Context, s cloud.Server, busy busyError) (store.Image, bool, error) {
	sh := sr.sh
	deadline := sr.busyDeadline()
	interval := sr.opts.BusyRetryInterval
	var im store.Image
	for attempt := 1; ; attempt++ {
		left := deadline.Sub(sh.now())
		if left <= 0 {
			detail := busy.detail
			if attempt > 1 {
				detail += fmt.Sprintf(" (still busy after %d looks, until max_lateness)", attempt)
			}
			return im, false, sr.skip(ctx, s, busy.res, SkipBusy, detail)
		}
		sr.log.Info("server busy; looking again later", LogKeyServerID, s.ID, LogKeyDetail, busy.detail, "in", min(interval, left).String())
		if err := sh.sleep(ctx, min(interval, left)); err != nil {
			return im, false, err
		}
		interval = min(interval*2, BusyRetryMaxInterval)
		if fresh, gerr := sr.cloud.GetServer(ctx, s.ID); gerr == nil {
			s = fresh
		} else if ctx.Err() != nil {
			return im, false, ctx.Err()
		}
		// A 409 dropped the intent; a task state found before the intent wrote none.
		row, err := sh.store.ImageByKey(ctx, sr.p.Name, s.ID, sr.slot)
		has := err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return im, false, err
		}
		var wait bool
		im, wait, err = sr.imageServer(ctx, s, row, has, false)
		if !errors.As(err, &busy) {
			return im, wait, err
		}
	}
}

// earlierImageInFlight says why an earlier slot's image of the server under this policy is
// still being made ("" when none is): a second createImage must not start then.
func (sr *slotRun) earlierImageInFlight(ctx context.Context, serverID string) (string, error) {
	rows, err := sr.sh.store.Images(ctx, store.ImageFilter{Policy: sr.p.Name, ServerID: serverID,
		States: []store.ImageState{store.ImageRequested, store.ImageCreating}})
	if err != nil {
		return "", err
	}
	now := sr.sh.store.Now()
	for _, im := range rows {
		if im.Slot.Equal(sr.slot) || (im.State == store.ImageRequested && im.Attempts == 0) {
			continue
		}
		if now.Before(im.RequestedAt.Add(sr.timeout)) {
			return fmt.Sprintf("the image of slot %s (row %d, %s) is still being made", StampSlot(im.Slot), im.Row, im.State), nil
		}
	}
	return "", nil
}

// errAbandoned marks a server whose work a test hook stopped, as a crash would.
var errAbandoned = errors.New("abandoned at a crash point")

// imageServer takes one selected server through its states for the slot, and
// returns the row to wait for when wait is true. In order:
//   - a row this slot already has is claimed and decides alone when it can: good,
//     creating (wait), deleted or failed with an image (done); a requested row, or
//     one failed before any image, is first looked for by its stamp, since an
//     earlier call's outcome may be unknown;
//   - an earlier slot's image still being made, an ERROR or locked server, a task
//     in progress (busyError: retryBusy looks again) skip it;
//   - it waits for the server's offset in the spread window and a worker slot;
//   - it renders the name and metadata, writes the intent row, and calls
//     requestImage.
//
// held says the caller already holds a worker slot for it (execute without a
// spread window); otherwise imageServer takes one once the server's offset is due.
func (sr *slotRun) imageServer(ctx context.Context, s cloud.Server, row store.Image, has, held bool) (im store.Image, wait bool, err error) {
	sh, p := sr.sh, sr.p
	log := sr.log.With(LogKeyServerID, s.ID, LogKeyServerName, s.Name)
	res := ServerResult{ServerID: s.ID, ServerName: s.Name, Existing: has}
	if has {
		if !sr.claim(row) {
			res.Outcome, res.ImageRow, res.ImageID = ServerWaiting, row.Row, row.ImageID
			res.Reason = "image is being waited on by a resumed wait of this process"
			sr.finish(res)
			return row, false, nil
		}
		sr.mu.Lock()
		sr.existing[s.ID] = true
		sr.mu.Unlock()
		res.ImageRow, res.ImageID, res.Adopted = row.Row, row.ImageID, row.Adopted
		switch row.State {
		case store.ImageGood:
			res.Outcome = ServerGood
			sr.finish(res)
			return row, false, nil
		case store.ImageCreating:
			return row, true, nil
		case store.ImageDeleting, store.ImageDeleted, store.ImageKeptProtected:
			res.Outcome, res.Reason = ServerGood, "image already "+string(row.State)
			if row.ActiveAt.IsZero() {
				res.Outcome, res.Reason = ServerFailed, row.Reason
			}
			sr.finish(res)
			return row, false, nil
		case store.ImageFailed:
			if row.ImageID != "" {
				// The slot's image was made and failed; a second image for the same slot
				// is not ours to make. The next slot tries again.
				res.Outcome, res.Reason = ServerFailed, row.Reason
				sr.finish(res)
				return row, false, nil
			}
		}
		// requested, or failed before any image existed: the outcome of an earlier
		// call may be unknown, so look for our stamped image before calling again.
		adopted, found, err := sr.adoptStamped(ctx, row, "row for this slot had no image id")
		if err != nil {
			return row, false, sr.failRow(ctx, row, res, "look for stamped image: "+cloud.Reason(err))
		}
		if found {
			return adopted, true, nil
		}
		if row.State == store.ImageRequested && row.Attempts > 0 && sh.store.Now().Before(row.RequestedAt.Add(sr.timeout)) {
			// A call was made for this row and its outcome was never learned (a crash or
			// a stop mid-call, or another process's call still in flight). Nova may still
			// be making the image (for a volume-backed server it snapshots every volume
			// before the Glance image appears, and sets no task state, so a second call
			// would be accepted): wait for the stamp until wait_timeout instead.
			return row, true, nil
		}
	}

	// An earlier slot's image still being made explains a task state of our own
	// snapshot too, so it is looked for before busy.
	// A row of this slot that reached here has no createImage sent yet (or a known
	// failure without an image), so the check applies to it as to a new server.
	inFlight, err := sr.earlierImageInFlight(ctx, s.ID)
	if err != nil {
		return row, false, err
	}
	if inFlight != "" && has && row.State == store.ImageRequested && row.Attempts == 0 && row.ImageID == "" {
		// Nothing was asked for this row: drop it, so that it does not wait out a
		// wait_timeout for an image that cannot exist; a later run of the slot may
		// try again.
		if derr := sh.store.DropIntent(context.WithoutCancel(ctx), row.Row, "in_flight: "+inFlight); derr != nil {
			return row, false, derr
		}
		res.ImageRow = 0
	}
	switch {
	case s.Status == "ERROR":
		return row, false, sr.skip(ctx, s, res, SkipErrorState, "server is in ERROR state; Nova refuses to image it")
	case s.Locked:
		return row, false, sr.skip(ctx, s, res, SkipLocked, "server is locked; Nova refuses to image it until it is unlocked")
	case inFlight != "":
		return row, false, sr.skip(ctx, s, res, SkipInFlight, inFlight)
	case s.TaskState != "":
		return row, false, busyError{res: res, detail: fmt.Sprintf("server has a task in progress (task_state %s)", s.TaskState)}
	}

	// Start at the server's stable offset inside the spread window, counted from the
	// slot, so that a late (catch-up) run does not wait at all. A manual run starts
	// at once.
	if sr.trigger != TriggerManual && p.Schedule != nil {
		if d := sr.slot.Add(spreadOffset(p.Name, s.ID, p.Schedule.Spread)).Sub(sh.now()); d > 0 {
			if err := sh.sleep(ctx, d); err != nil {
				return row, false, err
			}
		}
	}
	if !held {
		release, err := sh.workers.acquire(ctx, p.Name)
		if err != nil {
			return row, false, err
		}
		defer release()
	}

	name, meta, err := sr.render(s)
	if err != nil {
		if has {
			return row, false, sr.failRow(ctx, row, res, err.Error())
		}
		sr.recordEvent(ctx, store.Event{Kind: store.EventImageFailed, ServerID: s.ID, Message: err.Error()})
		res.Outcome, res.Reason = ServerFailed, err.Error()
		sh.metrics.ImageCreated(p.Name, CreateFailed, 0)
		sr.finish(res)
		return row, false, nil
	}
	if !has {
		var created bool
		row, created, err = sh.store.RecordIntent(ctx, store.Intent{
			Policy: p.Name, ServerID: s.ID, ServerName: s.Name, AZ: s.AvailabilityZone, VolumeBacked: s.VolumeBacked,
			Slot: sr.slot, SlotID: sr.slotID, Name: name, Metadata: meta, PolicyVersion: p.Version,
			ConfigVersion: sr.cfgVersion,
		})
		if err != nil {
			return row, false, err
		}
		res.ImageRow = row.Row
		if !sr.claim(row) {
			res.Outcome, res.ImageID = ServerWaiting, row.ImageID
			res.Reason = "image is being waited on by a resumed wait of this process"
			sr.finish(res)
			return row, false, nil
		}
		if !created {
			// Another process wrote the row between our read and now: it owns the call.
			res.Existing = true
			sr.log.Info("slot row appeared concurrently; not calling again", LogKeyServerID, s.ID, LogKeyServerName, s.Name)
			if row.State == store.ImageCreating {
				return row, true, nil
			}
			res.Outcome, res.Reason = ServerFailed, "row for this slot written by another run ("+string(row.State)+")"
			if row.State == store.ImageGood {
				res.Outcome, res.Reason = ServerGood, ""
			}
			sr.finish(res)
			return row, false, nil
		}
	}
	if h := sr.opts.hooks.afterIntent; h != nil {
		if err := h(s.ID); err != nil {
			return row, false, errAbandoned
		}
	}
	return sr.requestImage(ctx, s, row, res, name, meta, log)
}

// requestImage makes the createImage call for a row that has no image yet.
func (sr *slotRun) requestImage(ctx context.Context, s cloud.Server, row store.Image, res ServerResult, name string,
	meta map[string]string, log *slog.Logger) (store.Image, bool, error) {
	sh := sr.sh
	unlock, err := sh.servers.lock(ctx, s.ID)
	if err != nil {
		return row, false, err
	}
	// The pre hook runs just before createImage, under the server's lock and the
	// worker slot the caller holds (hooks count against limits.concurrency). From
	// the moment it starts a post is owed: thaw runs it on every path below that
	// does not end in an accepted createImage.
	var hk *openHook
	thaw := func(result string) {
		if hk != nil {
			sr.runPost(ctx, hk, s.ID, row.Row, "", result)
			hk = nil
		}
	}
	if sr.p.Image.Hooks != nil {
		var skip bool
		var detail string
		hk, meta, skip, detail, err = sr.runPre(ctx, s, row, meta)
		if err != nil {
			unlock()
			return row, false, err
		}
		if skip {
			unlock()
			// Nothing was asked of Nova: the intent goes, as for a 409.
			if derr := sh.store.DropIntent(context.WithoutCancel(ctx), row.Row, SkipHookFailed+": "+detail); derr != nil {
				return row, false, derr
			}
			res.ImageRow = 0
			return row, false, sr.skip(ctx, s, res, SkipHookFailed, detail+"; on_failure: skip")
		}
	}
	// The rate-limit token is taken before the attempt is recorded: a run stopped
	// while queued for it (a drain, a second SIGTERM) has sent nothing, and an
	// attempt on the row would make the resumed slot wait the whole wait_timeout for
	// a stamped image that cannot exist instead of calling at once.
	if err := sr.cloud.take(ctx); err != nil {
		unlock()
		thaw(PostNotRequested)
		return row, false, err
	}
	if err := ctx.Err(); err != nil {
		unlock()
		thaw(PostNotRequested)
		return row, false, err
	}
	row, err = sh.store.BeginAttempt(ctx, row.Row, name, meta)
	if err != nil {
		unlock()
		thaw(PostNotRequested)
		return row, false, err
	}
	id, err := sr.cloud.inner.CreateImage(ctx, s.ID, name, meta)
	unlock()
	if err == nil {
		if h := sr.opts.hooks.afterCreate; h != nil {
			if herr := h(s.ID, id); herr != nil {
				return row, false, errAbandoned
			}
		}
		bctx := context.WithoutCancel(ctx) // the id must be recorded once we have it
		row, err = sh.store.SetImageID(bctx, row.Row, id, false, "createImage returned image "+id)
		if err != nil {
			thaw(PostRequested)
			return row, false, err
		}
		log.Info("image requested", LogKeyImageID, id, LogKeyImageName, row.Name)
		if hk != nil {
			seen, why := sr.awaitPoint(ctx, s, id, hk.preEnd)
			result := PostRequested
			if !seen {
				result = PostPointNotSeen
				sr.recordCrashConsistent(ctx, row, why)
			}
			sr.runPost(ctx, hk, s.ID, row.Row, id, result)
		}
		return row, true, nil
	}
	if hk != nil {
		// No image, or one whose making nobody watched: not application-consistent.
		sr.recordCrashConsistent(ctx, row, "createImage failed after the pre hook: "+cloud.Reason(err))
	}
	thaw(PostCreateFailed)
	switch {
	case errors.Is(err, cloud.ErrBusy):
		// 409: Nova refused before making anything, so the intent can go and a later
		// run of this slot may try again.
		reason := "server busy: " + cloud.Reason(err)
		if derr := sh.store.DropIntent(context.WithoutCancel(ctx), row.Row, reason); derr != nil {
			return row, false, derr
		}
		res.ImageRow = 0
		if strings.Contains(strings.ToLower(cloud.Reason(err)), "locked") {
			// Nova's InstanceIsLocked: an operator's lock, not a task that ends soon.
			return row, false, sr.skip(ctx, s, res, SkipLocked, cloud.Reason(err))
		}
		return row, false, busyError{res: res, detail: "createImage refused (409): " + cloud.Reason(err)}
	case errors.Is(err, cloud.ErrUnknownOutcome) || (ctx.Err() == nil && isTransport(err)):
		// The image may exist: never call again before looking for it. The wait adopts
		// it when it shows up under our stamp, and fails the row at wait_timeout if not.
		bctx := context.WithoutCancel(ctx)
		if _, nerr := sh.store.NoteImage(bctx, row.Row, store.EventImageNote,
			"createImage outcome unknown ("+cloud.Reason(err)+"); looking for our stamped image"); nerr != nil {
			return row, false, nerr
		}
		adopted, found, aerr := sr.adoptStamped(ctx, row, "createImage outcome unknown")
		if aerr == nil && found {
			return adopted, true, nil
		}
		return row, true, nil
	case ctx.Err() != nil:
		// Cancelled mid-call: the outcome is unknown; the next run of the slot looks first.
		return row, false, ctx.Err()
	default:
		return row, false, sr.failRow(context.WithoutCancel(ctx), row, res, "createImage: "+cloud.Reason(err))
	}
}

// isTransport reports an error that is not one of the cloud's verdicts: the request
// may have reached the cloud.
func isTransport(err error) bool {
	for _, k := range []error{cloud.ErrNotFound, cloud.ErrBusy, cloud.ErrProtected, cloud.ErrInUse, cloud.ErrQuota,
		cloud.ErrInvalid, cloud.ErrUnavailable} {
		if errors.Is(err, k) {
			return false
		}
	}
	return true
}

// adoptStamped looks for our stamped image of the row's (policy, server, slot) and records
// it. found is false when there is none.
func (sr *slotRun) adoptStamped(ctx context.Context, row store.Image, why string) (store.Image, bool, error) {
	sh := sr.sh
	stamp := cloud.Stamp{Owner: sh.store.Owner(), Policy: row.Policy, Server: row.ServerID, Slot: StampSlot(row.Slot)}
	images, err := sr.cloud.ListImages(ctx, stamp.Properties())
	if err != nil {
		return row, false, err
	}
	img, ok := pickStamped(images, stamp)
	if !ok {
		return row, false, nil
	}
	msg := fmt.Sprintf("adopted image %s found by its stamp (%s)", img.ID, why)
	if n := countStamped(images, stamp); n > 1 {
		msg += fmt.Sprintf("; %d images carry this stamp, the oldest was adopted", n)
	}
	adopted, err := sh.store.SetImageID(context.WithoutCancel(ctx), row.Row, img.ID, true, msg)
	if err != nil {
		return row, false, err
	}
	sr.log.Info("image adopted", LogKeyServerID, row.ServerID, LogKeyServerName, row.ServerName, LogKeyImageID, img.ID, LogKeyImageName, img.Name)
	return adopted, true, nil
}

// pickStamped returns the oldest image carrying exactly stamp and made of the
// stamped server. Nova records the source server as instance_uuid on an
// image-backed server's snapshot (volume-backed ones have none); a snapshot of a
// server booted from one of our images inherits our whole stamp but names its own
// server there, and must never be adopted.
func pickStamped(images []cloud.Image, stamp cloud.Stamp) (cloud.Image, bool) {
	var best cloud.Image
	found := false
	for _, im := range images {
		st, ok := cloud.StampOf(im.Properties)
		if !ok || st != stamp || im.ID == "" {
			continue
		}
		if src := im.Properties["instance_uuid"]; src != "" && src != stamp.Server {
			continue
		}
		if !found || im.CreatedAt.Before(best.CreatedAt) || (im.CreatedAt.Equal(best.CreatedAt) && im.ID < best.ID) {
			best, found = im, true
		}
	}
	return best, found
}

func countStamped(images []cloud.Image, stamp cloud.Stamp) int {
	n := 0
	for _, im := range images {
		if st, ok := cloud.StampOf(im.Properties); ok && st == stamp {
			n++
		}
	}
	return n
}
