package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// SlotOutcome is what became of one slot of a policy: the persisted slots.outcome
// (0001's CHECK lists the values, 0003 adds empty) and the label value of
// imagekeeper_slots_total{outcome}. This is the one definition of the vocabulary.
type SlotOutcome string

// Slot outcomes. OutcomeRunning is the outcome of a slot whose run has started and
// not finished (or whose process died mid-run); every other one is final until a
// re-run of the same slot (StartSlot) makes it running again.
const (
	OutcomeRunning SlotOutcome = "running"
	// OutcomeRan: the run finished (FinishSlot); its counts say how it went.
	OutcomeRan SlotOutcome = "ran"
	// OutcomeCaughtUp: a run of a slot that was due while the daemon was down.
	OutcomeCaughtUp SlotOutcome = "caught_up"
	// OutcomeMissed: a slot that did not run (RecordSlot), past max_lateness or
	// with catch_up off.
	OutcomeMissed SlotOutcome = "missed"
	// OutcomeSkippedOverlap: a slot that did not run because the previous run of
	// the policy was still going (RecordSlot).
	OutcomeSkippedOverlap SlotOutcome = "skipped_overlap"
	// OutcomeFailed: the run failed as a whole (listing, panic, interrupted).
	OutcomeFailed SlotOutcome = "failed"
	// OutcomeEmpty is a slot whose policy selected no server: nothing failed, and
	// nothing was protected either. It is not a success.
	OutcomeEmpty SlotOutcome = "empty"
)

// FinalOutcomes lists the outcomes a slot can end with (all but running), in the
// order above: the label values of imagekeeper_slots_total{outcome}.
var FinalOutcomes = []SlotOutcome{OutcomeRan, OutcomeCaughtUp, OutcomeMissed, OutcomeSkippedOverlap, OutcomeFailed, OutcomeEmpty}

// Slot triggers: why a slot ran.
const (
	TriggerScheduled = "scheduled"
	TriggerCatchUp   = "catch_up"
	TriggerManual    = "manual"
)

// SlotCounts are the per-server tallies of one slot run.
type SlotCounts struct {
	// Selected is how many servers the policy selected.
	Selected int
	// Good is how many selected servers have a good image for the slot.
	Good int
	// Failed is how many selected servers' images failed.
	Failed int
	// Skipped is how many selected servers were skipped with a recorded reason.
	Skipped int
	// Existing is how many servers already had an image row for the slot when the
	// run began (a re-run of the same slot).
	Existing int
}

// Slot is one scheduled instant of one policy.
type Slot struct {
	ID            int64
	Policy        string
	Slot          time.Time
	Due           time.Time
	Trigger       string
	PolicyVersion string
	ConfigVersion string
	StartedAt     time.Time
	FinishedAt    time.Time
	Outcome       SlotOutcome
	Reason        string
	// Runs counts the runs of this slot (a manual re-run of a slot adds one).
	Runs   int
	Counts SlotCounts
}

const slotColumns = `id, policy, slot, due, trigger, policy_version, config_version, started_at, finished_at,
	outcome, reason, runs, selected, good, failed, skipped, existing`

func scanSlot(sc interface{ Scan(...any) error }) (Slot, error) {
	var s Slot
	var slot, due, started, finished sql.NullString
	err := sc.Scan(&s.ID, &s.Policy, &slot, &due, &s.Trigger, &s.PolicyVersion, &s.ConfigVersion, &started, &finished,
		&s.Outcome, &s.Reason, &s.Runs, &s.Counts.Selected, &s.Counts.Good, &s.Counts.Failed, &s.Counts.Skipped,
		&s.Counts.Existing)
	if err != nil {
		return Slot{}, err
	}
	for _, p := range []struct {
		dst *time.Time
		src sql.NullString
	}{{&s.Slot, slot}, {&s.Due, due}, {&s.StartedAt, started}, {&s.FinishedAt, finished}} {
		if *p.dst, err = parseTime(p.src); err != nil {
			return Slot{}, err
		}
	}
	return s, nil
}

// StartSlot records that a run of (sl.Policy, sl.Slot) begins now: it creates the
// slot row, or, for a re-run of the same slot, resets its outcome to running and
// counts the run. Due defaults to the slot instant. It returns the row as stored.
func (s *Store) StartSlot(ctx context.Context, sl Slot) (Slot, error) {
	if sl.Policy == "" || sl.Slot.IsZero() {
		return Slot{}, errors.New("start slot: policy and slot are required")
	}
	if sl.Due.IsZero() {
		sl.Due = sl.Slot
	}
	var out Slot
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		now := s.stamp()
		_, err := tx.ExecContext(ctx, `INSERT INTO slots (policy, slot, due, trigger, policy_version, config_version,
				started_at, outcome, runs)
			VALUES (?, ?, ?, ?, ?, ?, ?, 'running', 1)
			ON CONFLICT (policy, slot) DO UPDATE SET
				trigger = excluded.trigger, policy_version = excluded.policy_version,
				config_version = excluded.config_version, started_at = excluded.started_at,
				finished_at = NULL, outcome = 'running', reason = '', runs = runs + 1`,
			sl.Policy, fmtTime(sl.Slot), fmtTime(sl.Due), sl.Trigger, sl.PolicyVersion, sl.ConfigVersion, now)
		if err != nil {
			return err
		}
		out, err = scanSlot(tx.QueryRowContext(ctx, `SELECT `+slotColumns+` FROM slots WHERE policy = ? AND slot = ?`,
			sl.Policy, fmtTime(sl.Slot)))
		if err != nil {
			return err
		}
		_, err = s.insertEvent(ctx, tx, Event{Kind: EventSlotStarted, Policy: sl.Policy, Slot: sl.Slot, SlotID: out.ID,
			Message: fmt.Sprintf("run %d of slot (trigger %s, policy version %s)", out.Runs, orDash(sl.Trigger), orDash(sl.PolicyVersion))})
		return err
	})
	if err != nil {
		return Slot{}, fmt.Errorf("start slot %s %s: %w", sl.Policy, sl.Slot.UTC().Format(time.RFC3339), err)
	}
	return out, nil
}

// FinishSlot records the outcome, reason and counts of a slot run.
func (s *Store) FinishSlot(ctx context.Context, id int64, outcome SlotOutcome, reason string, c SlotCounts) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE slots SET finished_at = ?, outcome = ?, reason = ?,
				selected = ?, good = ?, failed = ?, skipped = ?, existing = ?
			WHERE id = ?`,
			s.stamp(), string(outcome), reason, c.Selected, c.Good, c.Failed, c.Skipped, c.Existing, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		sl, err := scanSlot(tx.QueryRowContext(ctx, `SELECT `+slotColumns+` FROM slots WHERE id = ?`, id))
		if err != nil {
			return err
		}
		msg := fmt.Sprintf("%s: %d selected, %d good, %d failed, %d skipped", outcome, c.Selected, c.Good, c.Failed, c.Skipped)
		if reason != "" {
			msg += ": " + reason
		}
		_, err = s.insertEvent(ctx, tx, Event{Kind: EventSlotFinished, Policy: sl.Policy, Slot: sl.Slot, SlotID: id, Message: msg})
		return err
	})
	if err != nil {
		return fmt.Errorf("finish slot %d: %w", id, err)
	}
	return nil
}

// RecordSlot records a slot that did not run (outcome missed or skipped_overlap, with
// sl.Reason). It refuses (ErrConflict) to overwrite a slot that has run or is running.
func (s *Store) RecordSlot(ctx context.Context, sl Slot) (Slot, error) {
	if sl.Policy == "" || sl.Slot.IsZero() || sl.Outcome == "" {
		return Slot{}, errors.New("record slot: policy, slot and outcome are required")
	}
	if sl.Due.IsZero() {
		sl.Due = sl.Slot
	}
	var out Slot
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		prev, err := scanSlot(tx.QueryRowContext(ctx, `SELECT `+slotColumns+` FROM slots WHERE policy = ? AND slot = ?`,
			sl.Policy, fmtTime(sl.Slot)))
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		case prev.Runs > 0:
			return fmt.Errorf("%w: slot already %s", ErrConflict, prev.Outcome)
		}
		now := s.stamp()
		_, err = tx.ExecContext(ctx, `INSERT INTO slots (policy, slot, due, trigger, policy_version, config_version,
				finished_at, outcome, reason)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (policy, slot) DO UPDATE SET finished_at = excluded.finished_at,
				outcome = excluded.outcome, reason = excluded.reason`,
			sl.Policy, fmtTime(sl.Slot), fmtTime(sl.Due), sl.Trigger, sl.PolicyVersion, sl.ConfigVersion, now, string(sl.Outcome), sl.Reason)
		if err != nil {
			return err
		}
		out, err = scanSlot(tx.QueryRowContext(ctx, `SELECT `+slotColumns+` FROM slots WHERE policy = ? AND slot = ?`,
			sl.Policy, fmtTime(sl.Slot)))
		if err != nil {
			return err
		}
		msg := string(sl.Outcome)
		if sl.Reason != "" {
			msg += ": " + sl.Reason
		}
		_, err = s.insertEvent(ctx, tx, Event{Kind: EventSlotRecorded, Policy: sl.Policy, Slot: sl.Slot, SlotID: out.ID, Message: msg})
		return err
	})
	if err != nil {
		return Slot{}, fmt.Errorf("record slot %s %s: %w", sl.Policy, sl.Slot.UTC().Format(time.RFC3339), err)
	}
	return out, nil
}

// SlotFilter selects slots; zero fields do not filter.
type SlotFilter struct {
	Policy string
	// Outcome, when set, keeps only slots with this outcome (e.g. OutcomeRunning).
	Outcome SlotOutcome
	// Since and Until bound the slot instant (inclusive).
	Since, Until time.Time
	// Limit caps the result to the newest Limit slots.
	Limit int
}

// Slots returns the matching slots, newest slot first.
func (s *Store) Slots(ctx context.Context, f SlotFilter) ([]Slot, error) {
	var where []string
	var args []any
	if f.Policy != "" {
		where, args = append(where, "policy = ?"), append(args, f.Policy)
	}
	if f.Outcome != "" {
		where, args = append(where, "outcome = ?"), append(args, string(f.Outcome))
	}
	if !f.Since.IsZero() {
		where, args = append(where, "slot >= ?"), append(args, fmtTime(f.Since))
	}
	if !f.Until.IsZero() {
		where, args = append(where, "slot <= ?"), append(args, fmtTime(f.Until))
	}
	q := `SELECT ` + slotColumns + ` FROM slots`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY slot DESC, id DESC"
	if f.Limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", f.Limit)
	}
	return queryAll(ctx, s.reader(), "slots", scanSlot, q, args...)
}

// SlotByKey returns the slot row of (policy, slot), ErrNotFound if there is none.
func (s *Store) SlotByKey(ctx context.Context, policy string, slot time.Time) (Slot, error) {
	return queryOne(ctx, s.reader(), fmt.Sprintf("slot %s %s", policy, slot.UTC().Format(time.RFC3339)), scanSlot,
		`SELECT `+slotColumns+` FROM slots WHERE policy = ? AND slot = ?`, policy, fmtTime(slot))
}

// LastSlot returns the policy's newest recorded slot of the schedule (whatever its
// outcome), ErrNotFound if it has none. The daemon uses it to find slots missed
// while it was down, so manual runs (`imagekeeper run`, whose slot is just the
// current minute) do not count: one made during the downtime would otherwise hide
// the scheduled slots before it, neither caught up nor recorded as missed.
func (s *Store) LastSlot(ctx context.Context, policy string) (Slot, error) {
	return queryOne(ctx, s.reader(), "last slot of "+policy, scanSlot, `SELECT `+slotColumns+` FROM slots WHERE policy = ?
		AND trigger != '`+TriggerManual+`' ORDER BY slot DESC LIMIT 1`, policy)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Policies returns the names of the policies the lineage has slots or images of,
// sorted: what a reader without the policy file can ask about.
func (s *Store) Policies(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT policy FROM slots UNION SELECT policy FROM images ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("list lineage policies: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, fmt.Errorf("scan lineage policy: %w", err)
		}
		out = append(out, name)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list lineage policies: %w", err)
	}
	return out, nil
}

// ofVolume is " of volume ID" for a message about a snapshot, or nothing while the
// volume is not known: never "of volume -".
func ofVolume(id string) string {
	if id == "" {
		return ""
	}
	return " of volume " + id
}
