package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/scheduler"
	"github.com/imagekeeper/imagekeeper/store"
)

// refreshLoop computes the gauges derived from the store once, off the main loop
// (readiness does not wait for a big lineage); runs and reconciles keep them
// current after that. The loop only recomputes schedule periods that went stale (a
// reload, a day old), which reads no store.
func (r *daemonRun) refreshLoop(ctx context.Context) {
	if err := r.metrics.Refresh(ctx, r.st, r.cfgs.Current(), time.Now()); err != nil && ctx.Err() == nil {
		r.log.Warn("refresh metrics", scheduler.LogKeyErr, err)
	}
	compactLineage(ctx, r.st, r.sched.Config(), r.log)
	t := time.NewTicker(defaultRefreshInterval)
	defer t.Stop()
	for {
		r.metrics.RefreshPeriods(r.cfgs.Current(), time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// reconcileLoop is the periodic reconcile: it reports drift, marks rows whose
// image is gone or hollow (so they stop counting as backups), promotes late-good
// images and deletes the leftover snapshots of images the journal recorded
// deleted; it touches nothing it cannot prove ours.
func (r *daemonRun) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(orDefault(r.d.ReconcileInterval, defaultReconcileInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		reconcile(ctx, scheduler.NewReconciler(r.shared), r.cfgs.Current(), r.log)
		if err := r.metrics.RefreshLeftover(ctx, r.st); err != nil && ctx.Err() == nil {
			r.log.Warn("refresh leftover snapshot gauge", scheduler.LogKeyErr, err)
		}
		compactLineage(ctx, r.st, r.sched.Config(), r.log)
	}
}

// compactLineage moves the deleted images older than lineage_retention to the
// archive, in short transactions that never hold the writer for long. It runs
// once at start and after every periodic reconcile.
func compactLineage(ctx context.Context, st *store.Store, cfg *policy.Config, log *slog.Logger) {
	if cfg == nil || cfg.LineageRetention <= 0 {
		return
	}
	moved, err := st.CompactLineage(ctx, time.Now().Add(-cfg.LineageRetention))
	if err != nil && ctx.Err() == nil {
		log.Warn("compact the lineage", scheduler.LogKeyErr, err, "moved", moved)
		return
	}
	if moved > 0 {
		log.Info("deleted images moved to the lineage archive", "moved", moved, "lineage_retention", cfg.LineageRetention.String())
	}
}

// reconcile runs one reconcile pass without fix and logs what it found.
func reconcile(ctx context.Context, rc *scheduler.Reconciler, cfg *policy.Config, log *slog.Logger) {
	rep, err := rc.Reconcile(ctx, cfg, false)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("reconcile", scheduler.LogKeyErr, err)
		}
		return
	}
	attrs := []any{"cloud_images", rep.CloudImages}
	drift := 0
	for cat, n := range rep.Counts {
		attrs = append(attrs, string(cat), n)
		drift += n
	}
	for cat, n := range rep.Fixed {
		attrs = append(attrs, "fixed_"+string(cat), n)
	}
	if drift > 0 {
		log.Warn("reconcile found drift between the cloud and the lineage; see `imagekeeper reconcile`", attrs...)
	} else {
		log.Debug("reconcile: cloud and lineage agree", attrs...)
	}
	checkForeignStamps(ctx, rc, cfg, log)
}

// checkForeignStamps warns about images that carry our policy names but another
// owner id: nothing of ours sees them again, and a lost lineage is the usual cause.
func checkForeignStamps(ctx context.Context, rc *scheduler.Reconciler, cfg *policy.Config, log *slog.Logger) {
	byOwner, err := rc.ForeignStamps(ctx, cfg)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("look for images of our policies stamped by another owner", scheduler.LogKeyErr, err)
		}
		return
	}
	for _, owner := range scheduler.Owners(byOwner) {
		log.Warn("images of this config's policies carry another owner id: nothing prunes or reports them; if the "+
			"lineage was lost, stop the daemon and run `imagekeeper recover --owner "+owner+"`",
			"foreign_owner", owner, "images", byOwner[owner])
	}
}

// initDrillMetrics exports the drill series of every policy with a verify block,
// the last successful drill's time read from the lineage.
func initDrillMetrics(ctx context.Context, st *store.Store, m *scheduler.Metrics, cfg *policy.Config, log *slog.Logger) {
	okAt, last, err := st.LastVerified(ctx)
	if err != nil {
		log.Warn("read last restore drills", scheduler.LogKeyErr, err)
	}
	for _, p := range cfg.Policies {
		if p.Verify == nil {
			continue
		}
		m.InitDrills(p.Name, drillPeriod(p.Verify.Schedule))
		m.SetLastVerified(p.Name, okAt[p.Name])
		m.SetLastVerifyResult(p.Name, last[p.Name])
	}
}

// drillPeriod is the longest gap between drills over the coming week, as the
// schedule period gauge is for slots.
func drillPeriod(s *policy.Schedule) time.Duration {
	var longest time.Duration
	t := s.Next(time.Now())
	end := t.Add(7 * 24 * time.Hour)
	for i := 0; i < 10000 && t.Before(end); i++ {
		n := s.Next(t)
		longest = max(longest, n.Sub(t))
		t = n
	}
	return longest
}
