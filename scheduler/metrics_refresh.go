package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// periodWindow is how far ahead SchedulePeriod looks for the longest gap between
// slots: a week covers weekday-only and weekly schedules.
const periodWindow = 7 * 24 * time.Hour

// periodMaxSlots bounds SchedulePeriod's walk (a week of per-minute slots is 10080).
const periodMaxSlots = 20000

// periodRecompute is how often a cached period is recomputed even if the policy did
// not change, so that a DST transition inside the window shows up.
const periodRecompute = 24 * time.Hour

// SchedulePeriod returns the longest gap between consecutive slots of s from now
// over the coming week (at least one gap), or 0 if s fires fewer than twice. It is
// the period the stale-recovery-point alert scales: with the longest gap, a
// weekday-only schedule does not alert every Monday morning.
func SchedulePeriod(s *policy.Schedule, now time.Time) time.Duration {
	if s == nil {
		return 0
	}
	if s.Every > 0 {
		return s.Every
	}
	end := now.Add(periodWindow)
	prev := s.Next(now)
	if prev.IsZero() {
		return 0
	}
	var longest time.Duration
	for i := 0; i < periodMaxSlots; i++ {
		next := s.Next(prev)
		if next.IsZero() {
			break
		}
		if d := next.Sub(prev); d > longest {
			longest = d
		}
		if next.After(end) {
			break
		}
		prev = next
	}
	return longest
}

// Refresh recomputes the gauges that come from the lineage rather than from events
// in this process: images by policy and state, leftover snapshots, the worst
// recovery point and the servers without a good image per policy, the last success
// per policy (so that a restarted daemon reports it before its first run), and each
// policy's schedule period. Only the policies of cfg are exported (a removed
// policy's images stay in the store, not in the metrics). The daemon calls it once
// at start; after that the gauges move with each run (RefreshPolicy) and nothing
// recomputes them all again: every query here is per policy and indexed, but a
// hundred of them every few seconds would still be a steady cost for nothing.
// Errors are returned joined after every gauge that could be computed was set; nil
// m, st or cfg does nothing.
func (m *Metrics) Refresh(ctx context.Context, st *store.Store, cfg *policy.Config, now time.Time) error {
	if m == nil || st == nil || cfg == nil {
		return nil
	}
	var errs []error
	for _, p := range cfg.Policies {
		errs = append(errs, m.refreshPolicy(ctx, st, p, now))
	}
	errs = append(errs, m.RefreshLeftover(ctx, st))
	if last, err := st.LastSuccessfulSlots(ctx); err != nil {
		errs = append(errs, err)
	} else {
		for _, p := range cfg.Policies {
			if t, ok := last[p.Name]; ok {
				m.SetLastSuccess(p.Name, t)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("refresh metrics: %w", err)
	}
	return nil
}

// RefreshPolicy recomputes what one run of p can have changed: p's images by state,
// its recovery point and servers without a good image, its schedule period, and
// the leftover snapshots (retention runs after the run). Each query reads only p's
// part of an index, so it costs the same with one policy or a hundred.
func (m *Metrics) RefreshPolicy(ctx context.Context, st *store.Store, p *policy.Policy, now time.Time) error {
	if m == nil || st == nil || p == nil {
		return nil
	}
	if err := errors.Join(m.refreshPolicy(ctx, st, p, now), m.RefreshLeftover(ctx, st)); err != nil {
		return fmt.Errorf("refresh metrics of %s: %w", p.Name, err)
	}
	return nil
}

// RefreshLeftover recomputes the leftover-snapshot gauge (after a prune or a
// reconcile).
func (m *Metrics) RefreshLeftover(ctx context.Context, st *store.Store) error {
	if m == nil || st == nil {
		return nil
	}
	n, err := st.LeftoverSnapshotCount(ctx)
	if err != nil {
		return err
	}
	m.leftover.Set(float64(n))
	return nil
}

// RefreshPeriods recomputes the schedule periods of cfg's policies whose cached
// value is stale (a changed policy, a day old); it reads no store and is cheap to
// call often.
func (m *Metrics) RefreshPeriods(cfg *policy.Config, now time.Time) {
	if m == nil || cfg == nil {
		return
	}
	for _, p := range cfg.Policies {
		m.refreshPeriod(p, now)
	}
}

// refreshPolicy sets p's store-derived gauges.
func (m *Metrics) refreshPolicy(ctx context.Context, st *store.Store, p *policy.Policy, now time.Time) error {
	m.refreshPeriod(p, now)
	var errs []error
	if counts, err := st.ImageCountsOfPolicy(ctx, p.Name); err != nil {
		errs = append(errs, err)
	} else {
		byState := map[store.ImageState]int{}
		for state, n := range counts {
			if state == store.ImageRequested {
				state = store.ImageCreating // the intent row of an image being requested
			}
			byState[state] += n
		}
		m.withPolicy(p.Name, func() {
			for _, state := range imageStates {
				m.images.WithLabelValues(p.Name, string(state)).Set(float64(byState[state]))
			}
		})
	}
	rps, err := st.NewestGoodPerServer(ctx, p.Name)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	without, oldest := 0, time.Time{}
	for _, rp := range rps {
		if rp.NewestGood.IsZero() {
			without++
			continue
		}
		if oldest.IsZero() || rp.NewestGood.Before(oldest) {
			oldest = rp.NewestGood
		}
	}
	m.withPolicy(p.Name, func() {
		m.serversNoGood.WithLabelValues(p.Name).Set(float64(without))
		// Servers without any good image are counted above, not given an
		// infinite age; with no good image at all there is no recovery point
		// to age, and the series is absent. The age itself is computed at
		// scrape time from this timestamp.
		m.newestGoodAge.set(p.Name, oldest)
	})
	// The empty-selection series survives a restart: read once from the
	// lineage, then kept by each slot's listing.
	if !m.emptyKnown(p.Name) {
		since, err := st.EmptySince(ctx, p.Name)
		if err != nil {
			errs = append(errs, err)
		} else {
			m.withPolicy(p.Name, func() { m.setEmptyLocked(p.Name, since, !since.IsZero(), true) })
		}
	}
	return errors.Join(errs...)
}

// refreshPeriod sets the policy's schedule period, recomputing it when the policy
// changed or the cached value is a day old.
func (m *Metrics) refreshPeriod(p *policy.Policy, now time.Time) {
	m.mu.Lock()
	c, ok := m.periods[p.Name]
	m.mu.Unlock()
	if ok && c.version == p.Version && now.Sub(c.at) < periodRecompute && !now.Before(c.at) {
		return
	}
	d := SchedulePeriod(p.Schedule, now)
	m.mu.Lock()
	m.periods[p.Name] = periodCache{version: p.Version, at: now}
	m.mu.Unlock()
	m.setSchedulePeriod(p.Name, d)
}

// emptyKnown reports whether the policy's empty-selection series is already known.
func (m *Metrics) emptyKnown(policy string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.emptySeeded[policy]
}
