package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// Values of IMAGEKEEPER_RESULT, the post hook's view of what became of the image.
const (
	// PostRequested: createImage was accepted and the snapshot's point in time was seen.
	PostRequested = "requested"
	// PostPointNotSeen: createImage was accepted but the point in time was not seen
	// (policy.MaxFrozen passed, or the daemon is stopping): the image is recorded
	// crash-consistent.
	PostPointNotSeen = "point_not_seen"
	// PostCreateFailed: createImage failed or was refused; there is no image.
	PostCreateFailed = "create_failed"
	// PostNotRequested: no createImage was sent (pre failed with skip, or the run stopped).
	PostNotRequested = "not_requested"
	// PostInterrupted: the process died between pre and post; the next start runs post.
	PostInterrupted = "interrupted"
)

// Nova's task states while the snapshot's point in time is still being taken
// (nova/compute/task_states.py): the API sets image_snapshot, the compute manager
// image_snapshot_pending, and the drivers move on to image_pending_upload then
// image_uploading once the disk has been captured. See the README,
// "Application-consistent images".
var snapshotPointStates = map[string]bool{"image_snapshot": true, "image_snapshot_pending": true}

// openHook is a pre hook that has started: its post is owed.
type openHook struct {
	journal store.HookRun
	env     map[string]string
	preEnd  time.Time
	pre     hookResult
}

// hookEnvFor is the environment both hooks of a server get.
func (sr *slotRun) hookEnvFor(s cloud.Server) map[string]string {
	return map[string]string{
		"IMAGEKEEPER_POLICY":      sr.p.Name,
		"IMAGEKEEPER_SERVER_ID":   s.ID,
		"IMAGEKEEPER_SERVER_NAME": s.Name,
		"IMAGEKEEPER_SLOT":        StampSlot(sr.slot),
	}
}

// hookData is the template data of a server's hook commands: the same as its image name's.
func (sr *slotRun) hookData(s cloud.Server) policy.TemplateData {
	loc := sr.p.Location()
	return policy.TemplateData{
		Server: policy.ServerInfo{ID: s.ID, Name: s.Name, AZ: s.AvailabilityZone, Tags: s.Tags, Metadata: s.Metadata},
		Policy: policy.PolicyInfo{Name: sr.p.Name},
		Slot:   sr.slot.In(loc),
		Now:    sr.sh.now().In(loc),
		RunID:  sr.runID,
	}
}

// runPre writes the journal row and runs the pre hook of server s. It returns the
// open hook (its post is owed from then on, whatever pre did), the metadata with
// the image's consistency, and skip when pre failed under on_failure: skip, in
// which case the post has already run. A non-nil error means pre did not run and
// nothing is owed.
func (sr *slotRun) runPre(ctx context.Context, s cloud.Server, row store.Image, meta map[string]string) (
	*openHook, map[string]string, bool, string, error) {
	hooks := sr.p.Image.Hooks
	data := sr.hookData(s)
	preArgv, err := hooks.Pre.Argv(data)
	if err == nil {
		var postArgv []string
		postArgv, err = hooks.Post.Argv(data)
		if err == nil {
			env := sr.hookEnvFor(s)
			var j store.HookRun
			// The journal row comes first: a process killed while pre runs still owes a post.
			j, err = sr.sh.store.StartHook(context.WithoutCancel(ctx), store.HookRun{Policy: sr.p.Name, ServerID: s.ID,
				ServerName: s.Name, Slot: sr.slot, ImageRow: row.Row, PostArgv: postArgv, PostEnv: env,
				PostTimeout: hooks.Post.Timeout})
			if err != nil {
				return nil, meta, false, "", err
			}
			hk := &openHook{journal: j, env: env}
			hk.pre = runHookCommand(ctx, preArgv, env, hooks.Pre.Timeout)
			hk.preEnd = sr.sh.now()
			sr.hookDone(ctx, s.ID, row.Row, "", HookPre, hk.pre)
			meta = maps.Clone(meta)
			if hk.pre.Result == HookOK {
				meta[cloud.StampConsistency] = cloud.ConsistencyApplication
				return hk, meta, false, "", nil
			}
			meta[cloud.StampConsistency] = cloud.ConsistencyCrash
			detail := "pre hook " + hk.pre.summary()
			if hooks.Pre.OnFailure == policy.OnFailureSkip {
				sr.runPost(ctx, hk, s.ID, row.Row, "", PostNotRequested)
				return nil, meta, true, detail, nil
			}
			sr.recordEvent(ctx, store.Event{Kind: store.EventImageNote, ServerID: s.ID, ImageRow: row.Row,
				Message: detail + "; on_failure: continue, so the image is crash-consistent"})
			return hk, meta, false, "", nil
		}
	}
	// A command that does not render for this server (a template error) is a failed
	// pre that never started: nothing was frozen, so no post is owed.
	res := hookResult{Result: HookFailed, Err: err.Error(), ExitCode: -1}
	sr.hookDone(ctx, s.ID, row.Row, "", HookPre, res)
	meta = maps.Clone(meta)
	meta[cloud.StampConsistency] = cloud.ConsistencyCrash
	if hooks.Pre.OnFailure == policy.OnFailureSkip {
		return nil, meta, true, "pre hook " + res.summary(), nil
	}
	return nil, meta, false, "", nil
}

// hookDone records one hook run: event, metrics, log (its output at debug level).
func (sr *slotRun) hookDone(ctx context.Context, serverID string, imageRow int64, imageID, hook string, res hookResult) {
	sr.sh.metrics.HookRan(sr.p.Name, hook, res.Result, res.Duration)
	kind := store.EventHookRan
	if res.Result != HookOK {
		kind = store.EventHookFailed
	}
	sr.recordEvent(ctx, store.Event{Kind: kind, ServerID: serverID, ImageRow: imageRow, ImageID: imageID,
		Message: hook + " hook " + res.summary()})
	log := sr.log.With(LogKeyServerID, serverID, LogKeyHook, hook, LogKeyResult, res.Result, "exit_code", res.ExitCode,
		LogKeyDuration, res.Duration.Round(time.Millisecond).String())
	if res.Result != HookOK {
		log.Warn("hook failed", LogKeyErr, res.Err)
	} else {
		log.Info("hook ran")
	}
	log.Debug("hook output", "stdout", res.Stdout, "stderr", res.Stderr, "truncated", res.Truncated)
}

// runPost runs the owed post hook and closes the journal row. A stopping daemon
// does not stop it: a frozen application must never stay frozen because of us.
func (sr *slotRun) runPost(ctx context.Context, hk *openHook, serverID string, imageRow int64, imageID, result string) {
	bctx := context.WithoutCancel(ctx)
	env := maps.Clone(hk.env)
	env["IMAGEKEEPER_IMAGE_ID"] = imageID
	env["IMAGEKEEPER_RESULT"] = result
	res := runHookCommand(bctx, hk.journal.PostArgv, env, hk.journal.PostTimeout)
	sr.hookDone(ctx, serverID, imageRow, imageID, HookPost, res)
	if err := sr.sh.store.FinishHook(bctx, hk.journal.ID, res.Result); err != nil {
		sr.log.Error("close hook journal row; the next start runs this post again", LogKeyServerID, serverID, LogKeyErr, err)
	}
}

// awaitPoint waits until the snapshot's point in time of image id of server s has
// been taken, at most until policy.MaxFrozen after pre ended. seen is false when it
// was not seen (deadline, or ctx done: a drain thaws at once).
func (sr *slotRun) awaitPoint(ctx context.Context, s cloud.Server, imageID string, preEnd time.Time) (seen bool, why string) {
	sh := sr.sh
	interval := min(sh.opts.PollInterval, time.Second)
	deadline := preEnd.Add(policy.MaxFrozen)
	for {
		if ctx.Err() != nil {
			return false, "the run stopped before the snapshot's point in time was seen"
		}
		if s.VolumeBacked {
			// Nova's API creates every Cinder snapshot (status creating: the point in
			// time is taken) before it records the Glance image with the mapping.
			if ok, err := sr.snapshotsExist(ctx, imageID); err == nil && ok {
				return true, ""
			}
		} else if srv, err := sr.cloud.GetServer(ctx, s.ID); err == nil && !snapshotPointStates[srv.TaskState] {
			return true, ""
		} else if errors.Is(err, cloud.ErrNotFound) {
			return false, "the server is gone"
		}
		if !sh.now().Before(deadline) {
			return false, fmt.Sprintf("the snapshot's point in time was not seen within %s of the pre hook", policy.MaxFrozen)
		}
		if err := sh.sleep(ctx, interval); err != nil {
			return false, "the run stopped before the snapshot's point in time was seen"
		}
	}
}

// snapshotsExist reports whether the image names its volume snapshots and every
// one of them exists in Cinder.
func (sr *slotRun) snapshotsExist(ctx context.Context, imageID string) (bool, error) {
	img, err := sr.cloud.GetImage(ctx, imageID)
	if err != nil || len(img.Snapshots) == 0 {
		return false, err
	}
	for _, ref := range img.Snapshots {
		sn, err := sr.cloud.GetSnapshot(ctx, ref.SnapshotID)
		if err != nil || sn.Status == cloud.SnapshotError {
			return false, err
		}
	}
	return true, nil
}

// RunOwedPostHooks runs the post hook of every pre that a previous process started
// and never followed with a post (it was killed between them), before anything
// else happens at start. It returns how many ran.
func (r *Runner) RunOwedPostHooks(ctx context.Context) (int, error) {
	return RunOwedPostHooks(ctx, r.sh.store, r.sh.log, r.sh.metrics)
}

// RunOwedPostHooks is Runner.RunOwedPostHooks for a process that has no cloud yet:
// the daemon calls it right after opening the lineage, before it connects (a
// frozen application must not wait for Keystone). metrics may be nil.
func RunOwedPostHooks(ctx context.Context, st *store.Store, log *slog.Logger, metrics *Metrics) (int, error) {
	// A post hook needs no cloud: the shared resources here are the lineage, the
	// logger and the metrics.
	sh := NewShared(SharedOptions{Store: st, Logger: log, Metrics: metrics})
	open, err := st.OpenHooks(ctx)
	if err != nil {
		return 0, fmt.Errorf("owed post hooks: %w", err)
	}
	for _, j := range open {
		sr := &slotRun{sh: sh, p: &policy.Policy{Name: j.Policy}, slot: j.Slot,
			log: sh.log.With(LogKeyPolicy, j.Policy, LogKeySlot, StampSlot(j.Slot))}
		sr.log.Warn("a previous process was stopped between a pre and its post hook; running the post now",
			LogKeyServerID, j.ServerID, LogKeyJournalRow, j.ID)
		imageID := ""
		if j.ImageRow != 0 {
			if im, err := st.Image(ctx, j.ImageRow); err == nil {
				imageID = im.ImageID
				sr.recordCrashConsistent(ctx, im, "the process died between the pre and the post hook")
			}
		}
		sr.runPost(ctx, &openHook{journal: j, env: j.PostEnv}, j.ServerID, j.ImageRow, imageID, PostInterrupted)
	}
	return len(open), nil
}

// recordCrashConsistent records in the lineage that an image asked for as
// application-consistent is crash-consistent after all (post ran before its point
// in time was seen).
func (sr *slotRun) recordCrashConsistent(ctx context.Context, im store.Image, why string) {
	if im.Metadata[cloud.StampConsistency] != cloud.ConsistencyApplication {
		return
	}
	if err := sr.sh.store.SetConsistency(context.WithoutCancel(ctx), im.Row, cloud.ConsistencyCrash,
		"recorded crash-consistent: "+why); err != nil {
		sr.log.Error("record crash consistency", LogKeyImageRow, im.Row, LogKeyErr, err)
	}
}
