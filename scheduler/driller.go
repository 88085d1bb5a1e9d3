package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// DrillStampKey is the metadata key of a drill server: its value is the drill's
// token in the journal. A server is deleted as a drill server only when it carries
// our owner stamp and a token the journal holds.
const DrillStampKey = "imagekeeper_drill"

// Drill timing defaults.
const (
	// DefaultDrillCleanupInterval is how often the daemon looks for drill servers and
	// volumes a crash or a failed deletion left behind.
	DefaultDrillCleanupInterval = 5 * time.Minute
	// drillGoneTimeout bounds the wait for a deleted drill server or volume to go.
	drillGoneTimeout = 10 * time.Minute
	// consoleLines is how much of the console log a drill reads.
	consoleLines = 200
)

// DrillResult is one drilled server.
type DrillResult struct {
	Policy        string
	ServerID      string
	ServerName    string
	ImageID       string
	DrillServerID string
	Result        string // store.VerifyOK, VerifyFailed, VerifyTimeout
	Detail        string
	Duration      time.Duration
	// CleanupError is set when the drill server or its volumes could not be
	// deleted yet; the periodic cleanup finishes the job.
	CleanupError string
}

// DrillReport is one drill of a policy.
type DrillReport struct {
	Policy  string
	Results []DrillResult
	// Skipped names servers left out because their backup is in flight.
	Skipped []string
}

// drillHooks are crash points of a drill, for tests: a hook that returns an
// error abandons the drill right there, as a killed process would.
type drillHooks struct {
	afterBoot func(drillServerID string) error
}

// Driller runs the restore drills: it boots a server from a policy's newest good
// images, checks that it comes up, and deletes what it made. Its drills take
// worker slots and the request rate from Shared like any other work.
type Driller struct {
	sh *Shared
	// active holds the journal rows of the drills this Driller is running, which
	// CleanupDrills leaves alone.
	mu     sync.Mutex
	active map[int64]bool
	hooks  drillHooks
}

// NewDriller returns the restore drills on the process's shared resources.
func NewDriller(sh *Shared) *Driller { return &Driller{sh: sh, active: map[int64]bool{}} }

// Drill runs one restore drill of p now: it picks p.Verify.Sample servers with a
// good image, the least recently drilled first, boots each server's newest good
// image, waits for ACTIVE (and the console marker), records the result on the
// image row, and deletes the drill server and every volume it was given. A drill
// takes a worker slot and the shared request rate like a backup run, and skips a
// server whose backup is in flight.
func (dr *Driller) Drill(ctx context.Context, p *policy.Policy) (*DrillReport, error) {
	if p.Verify == nil {
		return nil, fmt.Errorf("policy %s has no verify block", p.Name)
	}
	rep := &DrillReport{Policy: p.Name}
	release, err := dr.sh.AcquireWorker(ctx, p.Name)
	if err != nil {
		return nil, err
	}
	defer release()
	picks, skipped, err := dr.drillCandidates(ctx, p)
	if err != nil {
		return nil, err
	}
	rep.Skipped = skipped
	if len(picks) == 0 {
		dr.sh.log.Info("restore drill: no server has a good image to drill", LogKeyPolicy, p.Name)
		return rep, nil
	}
	for _, im := range picks {
		res, err := dr.drillOne(ctx, p, im)
		if err != nil {
			return rep, err
		}
		rep.Results = append(rep.Results, res)
	}
	return rep, nil
}

// drillCandidates returns the newest good image of up to Sample servers, the least
// recently drilled servers first; servers with an image in flight are skipped.
func (dr *Driller) drillCandidates(ctx context.Context, p *policy.Policy) (picks []store.Image, skipped []string, err error) {
	rows, err := dr.sh.store.Images(ctx, store.ImageFilter{Policy: p.Name,
		States: []store.ImageState{store.ImageGood, store.ImageRequested, store.ImageCreating}})
	if err != nil {
		return nil, nil, fmt.Errorf("drill %s: %w", p.Name, err)
	}
	newest := map[string]store.Image{}
	busy := map[string]bool{}
	for _, im := range rows {
		if im.State != store.ImageGood {
			busy[im.ServerID] = true
			continue
		}
		if cur, ok := newest[im.ServerID]; !ok || im.Slot.After(cur.Slot) || (im.Slot.Equal(cur.Slot) && im.Row > cur.Row) {
			newest[im.ServerID] = im
		}
	}
	last, err := dr.sh.store.LastDrilledServers(ctx, p.Name)
	if err != nil {
		return nil, nil, err
	}
	var servers []string
	for id := range newest {
		if busy[id] {
			skipped = append(skipped, id)
			continue
		}
		servers = append(servers, id)
	}
	sort.Strings(skipped)
	sort.Slice(servers, func(i, j int) bool {
		a, b := last[servers[i]], last[servers[j]]
		if !a.Equal(b) {
			return a.Before(b)
		}
		return servers[i] < servers[j]
	})
	for _, id := range servers[:min(len(servers), p.Verify.Sample)] {
		picks = append(picks, newest[id])
	}
	return picks, skipped, nil
}

func newDrillToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// drillOne drills one image: journal row, boot, wait, result, cleanup.
func (dr *Driller) drillOne(ctx context.Context, p *policy.Policy, im store.Image) (DrillResult, error) {
	v := p.Verify
	cl := dr.sh.Cloud()
	res := DrillResult{Policy: p.Name, ServerID: im.ServerID, ServerName: im.ServerName, ImageID: im.ImageID}
	log := dr.sh.log.With(LogKeyPolicy, p.Name, LogKeyServerID, im.ServerID, LogKeyImageID, im.ImageID)
	d, err := dr.sh.store.StartDrill(ctx, store.Drill{Policy: p.Name, ServerID: im.ServerID, ImageRow: im.Row,
		ImageID: im.ImageID, Token: newDrillToken()})
	if err != nil {
		return res, err
	}
	dr.mu.Lock()
	dr.active[d.ID] = true
	dr.mu.Unlock()
	defer func() {
		dr.mu.Lock()
		delete(dr.active, d.ID)
		dr.mu.Unlock()
	}()
	start := dr.sh.now()
	name := "imagekeeper-drill-" + truncateName(orName(im.ServerName, im.ServerID), 40) + "-" + d.Token[:8]
	id, err := cl.CreateServer(ctx, cloud.BootRequest{Name: name, ImageID: im.ImageID, Flavor: v.Flavor, Network: v.Network,
		AvailabilityZone: im.AZ, Metadata: map[string]string{DrillStampKey: d.Token, cloud.StampOwner: dr.sh.store.Owner()}})
	if err != nil {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		res.Result, res.Detail = store.VerifyFailed, drillRefusal(err)
		if errors.Is(err, cloud.ErrUnknownOutcome) || errors.Is(err, cloud.ErrUnavailable) {
			// The cloud did not answer: no verdict on the image. A server may exist
			// all the same; the cleanup finds it by its token.
			res.Result, res.Detail = "", "no answer to the boot request: "+cloud.Reason(err)
			log.Warn("restore drill: no verdict", LogKeyDetail, res.Detail)
		}
	} else {
		res.DrillServerID, d.DrillServerID = id, id
		if err := dr.sh.store.SetDrillServer(ctx, d.ID, id, nil); err != nil {
			return res, err
		}
		if h := dr.hooks.afterBoot; h != nil {
			if herr := h(id); herr != nil {
				return res, herr
			}
		}
		res.Result, res.Detail = dr.awaitDrill(ctx, cl, &d, v, log)
		if ctx.Err() != nil {
			// Stopped (a drain): no verdict on the image; the cleanup below still runs.
			res.Result = ""
		}
	}
	res.Duration = dr.sh.now().Sub(start)
	bctx := context.WithoutCancel(ctx)
	if res.Result != "" {
		if err := dr.sh.store.FinishDrill(bctx, d, res.Result, res.Detail); err != nil {
			return res, err
		}
		dr.sh.metrics.DrillResult(p.Name, res.Result, res.Duration, dr.sh.now())
		log.Info("restore drill", LogKeyResult, res.Result, LogKeyDetail, res.Detail, LogKeyDrillServerID, res.DrillServerID,
			LogKeyDuration, res.Duration.Round(time.Millisecond))
	}
	cctx, cancel := context.WithTimeout(bctx, drillGoneTimeout)
	defer cancel()
	if err := dr.cleanDrill(cctx, cl, d); err != nil {
		res.CleanupError = err.Error()
		log.Warn("restore drill: cleanup incomplete, the periodic cleanup will retry", LogKeyDrillServerID, res.DrillServerID, LogKeyErr, err)
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	return res, nil
}

func orName(name, id string) string {
	if name != "" {
		return name
	}
	return id
}

func truncateName(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// drillRefusal words a refused boot: quotas by name.
func drillRefusal(err error) string {
	if errors.Is(err, cloud.ErrQuota) {
		return "the project's quota refuses the drill server: " + cloud.Reason(err)
	}
	return "boot refused: " + cloud.Reason(err)
}

// awaitDrill waits for the drill server to be ACTIVE (and to print the console
// marker) within v.Timeout, recording its volumes as they appear.
func (dr *Driller) awaitDrill(ctx context.Context, cl cloud.Cloud, d *store.Drill, v *policy.Verify, log *slog.Logger) (result, detail string) {
	deadline := dr.sh.now().Add(v.Timeout)
	interval := dr.sh.opts.PollInterval
	active := false
	for {
		if !active {
			s, err := cl.GetServer(ctx, d.DrillServerID)
			switch {
			case err == nil:
				if len(s.VolumeIDs) > 0 && !slices.Equal(s.VolumeIDs, d.VolumeIDs) {
					d.VolumeIDs = append([]string(nil), s.VolumeIDs...)
					if err := dr.sh.store.SetDrillServer(context.WithoutCancel(ctx), d.ID, d.DrillServerID, d.VolumeIDs); err != nil {
						log.Warn("restore drill: record volumes", LogKeyErr, err)
					}
				}
				switch s.Status {
				case cloud.ServerActive:
					active = true
					if v.ConsoleMarker == "" {
						return store.VerifyOK, "ACTIVE"
					}
				case cloud.ServerError:
					fault := s.Fault
					if fault == "" {
						fault = "Nova gave no fault message"
					}
					return store.VerifyFailed, "ERROR: " + fault
				}
			case errors.Is(err, cloud.ErrNotFound):
				return store.VerifyFailed, "the drill server disappeared while building"
			case ctx.Err() != nil:
				return store.VerifyFailed, ctx.Err().Error()
			case !cloud.Retryable(err):
				log.Warn("restore drill: get server", LogKeyErr, err)
			}
		}
		if active {
			out, err := cl.ConsoleOutput(ctx, d.DrillServerID, consoleLines)
			if err == nil && strings.Contains(out, v.ConsoleMarker) {
				return store.VerifyOK, fmt.Sprintf("ACTIVE, console shows %q", v.ConsoleMarker)
			}
		}
		if !dr.sh.now().Before(deadline) {
			if active {
				return store.VerifyTimeout, fmt.Sprintf("ACTIVE, but the console did not show %q within %s", v.ConsoleMarker, v.Timeout)
			}
			return store.VerifyTimeout, fmt.Sprintf("not ACTIVE within %s", v.Timeout)
		}
		if err := dr.sh.sleep(ctx, min(interval, time.Until(deadline)+time.Millisecond)); err != nil {
			return store.VerifyFailed, err.Error()
		}
		interval = nextPoll(interval, dr.sh.opts.MaxPollInterval)
	}
}

// cleanDrill deletes a drill's server (found by its token when its id was never
// recorded) and every volume it was given, waits until they are gone, and marks
// the journal row done.
func (dr *Driller) cleanDrill(ctx context.Context, cl cloud.Cloud, d store.Drill) error {
	if d.DrillServerID == "" {
		found, err := dr.findDrillServer(ctx, cl, d.Token)
		if err != nil {
			return err
		}
		d.DrillServerID = found
	}
	if d.DrillServerID != "" {
		s, err := cl.GetServer(ctx, d.DrillServerID)
		switch {
		case err == nil:
			if s.Metadata[DrillStampKey] != d.Token || s.Metadata[cloud.StampOwner] != dr.sh.store.Owner() {
				// Never anything else: the id does not carry this drill's stamp.
				return fmt.Errorf("server %s does not carry drill token %s of owner %s: not deleting it", s.ID, d.Token, dr.sh.store.Owner())
			}
			for _, vid := range s.VolumeIDs {
				if !slices.Contains(d.VolumeIDs, vid) {
					d.VolumeIDs = append(d.VolumeIDs, vid)
				}
			}
			// The volumes are journaled before the server goes: once it is gone
			// nothing else names them.
			if err := dr.sh.store.SetDrillServer(ctx, d.ID, d.DrillServerID, d.VolumeIDs); err != nil {
				return err
			}
			if err := cl.DeleteServer(ctx, d.DrillServerID); err != nil && !errors.Is(err, cloud.ErrNotFound) {
				return fmt.Errorf("delete drill server %s: %w", d.DrillServerID, err)
			}
			if err := dr.waitGone(ctx, func() error { _, err := cl.GetServer(ctx, d.DrillServerID); return err }); err != nil {
				return fmt.Errorf("drill server %s: %w", d.DrillServerID, err)
			}
		case errors.Is(err, cloud.ErrNotFound):
		default:
			return fmt.Errorf("look up drill server %s: %w", d.DrillServerID, err)
		}
	}
	for _, vid := range d.VolumeIDs {
		if err := dr.deleteDrillVolume(ctx, cl, vid); err != nil {
			return err
		}
	}
	return dr.sh.store.MarkDrillCleaned(ctx, d)
}

// deleteDrillVolume deletes a volume a drill server was given, retrying while it
// is still detaching, and waits until it is gone.
func (dr *Driller) deleteDrillVolume(ctx context.Context, cl cloud.Cloud, id string) error {
	interval := dr.sh.opts.PollInterval
	for {
		err := cl.DeleteVolume(ctx, id)
		if err == nil || errors.Is(err, cloud.ErrNotFound) {
			break
		}
		if !errors.Is(err, cloud.ErrInUse) && !cloud.Retryable(err) {
			return fmt.Errorf("delete drill volume %s: %w", id, err)
		}
		if v, gerr := cl.GetVolume(ctx, id); gerr == nil && v.Status == cloud.VolumeDeleting {
			break
		}
		if serr := dr.sh.sleep(ctx, interval); serr != nil {
			return fmt.Errorf("delete drill volume %s: %w (last: %v)", id, serr, err)
		}
		interval = nextPoll(interval, dr.sh.opts.MaxPollInterval)
	}
	if err := dr.waitGone(ctx, func() error { _, err := cl.GetVolume(ctx, id); return err }); err != nil {
		return fmt.Errorf("drill volume %s: %w", id, err)
	}
	return nil
}

// waitGone polls get until it answers ErrNotFound.
func (dr *Driller) waitGone(ctx context.Context, get func() error) error {
	interval := dr.sh.opts.PollInterval
	for {
		err := get()
		if errors.Is(err, cloud.ErrNotFound) {
			return nil
		}
		if err != nil && !cloud.Retryable(err) {
			return err
		}
		if serr := dr.sh.sleep(ctx, interval); serr != nil {
			return fmt.Errorf("still there: %w", serr)
		}
		interval = nextPoll(interval, dr.sh.opts.MaxPollInterval)
	}
}

// findDrillServer looks for the server carrying a drill's token (a boot whose
// answer was lost, or a crash before its id was recorded); "" when there is none.
func (dr *Driller) findDrillServer(ctx context.Context, cl cloud.Cloud, token string) (string, error) {
	list, err := cl.ListServers(ctx, cloud.Selector{})
	if err != nil {
		return "", fmt.Errorf("look for drill server %s: %w", token, err)
	}
	for _, s := range list {
		if s.Metadata[DrillStampKey] == token && s.Metadata[cloud.StampOwner] == dr.sh.store.Owner() {
			return s.ID, nil
		}
	}
	return "", nil
}

// CleanupDrills finishes every drill the journal does not record done: it deletes
// the drill servers and volumes a crash, a drain or a failed deletion left behind.
// It deletes only what the journal names (servers by id or by their token), never
// anything else. It returns how many drills it finished.
func (dr *Driller) CleanupDrills(ctx context.Context) (int, error) {
	open, err := dr.sh.store.OpenDrills(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, d := range open {
		dr.mu.Lock()
		active := dr.active[d.ID]
		dr.mu.Unlock()
		if active {
			continue // a drill of this process is still at work on it
		}
		// Read again: a drill of this process may have finished since the list.
		if cur, err := dr.sh.store.DrillByToken(ctx, d.Token); err != nil || cur.State == store.DrillDone {
			continue
		} else {
			d = cur
		}
		if err := dr.cleanDrill(ctx, dr.sh.Cloud(), d); err != nil {
			errs = append(errs, fmt.Errorf("drill %s: %w", d.Token, err))
			continue
		}
		dr.sh.log.Info("restore drill: cleaned up leftovers", LogKeyPolicy, d.Policy, LogKeyDrillServerID, d.DrillServerID,
			"volumes", len(d.VolumeIDs))
		n++
	}
	return n, errors.Join(errs...)
}

// DrillLoopOptions configures WatchDrills.
type DrillLoopOptions struct {
	// CleanupInterval is how often leftovers are looked for
	// (DefaultDrillCleanupInterval when zero).
	CleanupInterval time.Duration
	// Done, when set, is called after each drill with its report.
	Done func(*DrillReport)
}

// WatchDrills runs the restore drills of the current config on their schedules
// until ctx ends, and cleans up leftover drills at start and every
// CleanupInterval. A policy's drill never overlaps its previous one: a drill due
// while the last still runs is skipped.
func (dr *Driller) WatchDrills(ctx context.Context, current func() *policy.Config, o DrillLoopOptions) error {
	if o.CleanupInterval <= 0 {
		o.CleanupInterval = DefaultDrillCleanupInterval
	}
	if _, err := dr.CleanupDrills(ctx); err != nil && ctx.Err() == nil {
		dr.sh.log.Warn("restore drill cleanup", LogKeyErr, err)
	}
	nextCleanup := dr.sh.now().Add(o.CleanupInterval)
	next := map[string]time.Time{}
	sched := map[string]*policy.Schedule{}
	running := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		now := dr.sh.now()
		wake := nextCleanup
		cfg := current()
		seen := map[string]bool{}
		if cfg != nil {
			for _, p := range cfg.Policies {
				if p.Verify == nil || !p.Enabled {
					continue
				}
				seen[p.Name] = true
				if sched[p.Name] != p.Verify.Schedule {
					sched[p.Name], next[p.Name] = p.Verify.Schedule, p.Verify.Schedule.Next(now)
				}
				if !now.Before(next[p.Name]) {
					next[p.Name] = p.Verify.Schedule.Next(now)
					mu.Lock()
					busy := running[p.Name]
					if !busy {
						running[p.Name] = true
					}
					mu.Unlock()
					if busy {
						dr.sh.log.Warn("restore drill still running at its next time: skipped", LogKeyPolicy, p.Name)
					} else {
						wg.Add(1)
						go func(p *policy.Policy) {
							defer wg.Done()
							defer func() { mu.Lock(); delete(running, p.Name); mu.Unlock() }()
							rep, err := dr.Drill(ctx, p)
							if err != nil && ctx.Err() == nil {
								dr.sh.log.Error("restore drill failed to run", LogKeyPolicy, p.Name, LogKeyErr, err)
							}
							if rep != nil && o.Done != nil {
								o.Done(rep)
							}
						}(p)
					}
				}
				if next[p.Name].Before(wake) {
					wake = next[p.Name]
				}
			}
		}
		for name := range sched {
			if !seen[name] {
				delete(sched, name)
				delete(next, name)
			}
		}
		if !now.Before(nextCleanup) {
			nextCleanup = now.Add(o.CleanupInterval)
			if _, err := dr.CleanupDrills(ctx); err != nil && ctx.Err() == nil {
				dr.sh.log.Warn("restore drill cleanup", LogKeyErr, err)
			}
			if nextCleanup.Before(wake) {
				wake = nextCleanup
			}
		}
		// Wake at the next drill or cleanup, and at least every few seconds so that a
		// reloaded config is picked up.
		d := min(wake.Sub(dr.sh.now()), 5*time.Second)
		if err := dr.sh.sleep(ctx, max(d, 10*time.Millisecond)); err != nil {
			return nil
		}
	}
}
