package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/scheduler"
)

// pruneOptions are the flags of `imagekeeper prune`.
type pruneOptions struct {
	*common
	policy string
	dryRun bool
}

// newPruneCommand builds `imagekeeper prune`.
func newPruneCommand(m *Main) *cobra.Command {
	o := &pruneOptions{}
	cmd := &cobra.Command{
		Use:   "prune [--policy NAME] [--dry-run]",
		Short: "apply retention now: delete what no rule keeps (--dry-run to only show it)",
		Long: `Applies retention to one policy or all of them: deletes, through the journal,
every image no rule keeps and the volume snapshots behind it. With --dry-run it
changes nothing and shows what it would do, with a reason per image. Exit 1 when
a prune could not decide or a guard rail refused a deletion.`,
		Example: `  imagekeeper prune --dry-run
  imagekeeper prune --policy web-daily -o json`,
		Args: noArgs,
		RunE: inDaemonOr(o, func(cmd *cobra.Command, args []string) error {
			return runPrune(cmd.Context(), m, o)
		}),
	}
	o.common = newCommon(m, cmd).withConfig().withOutput().withLogs("warn")
	f := cmd.Flags()
	f.StringVar(&o.policy, "policy", "", "policy to prune (default: every policy in the file)")
	f.BoolVar(&o.dryRun, "dry-run", false, "show what would be deleted; change nothing")
	completePolicies(cmd, o.common)
	return cmd
}

// pruneItemJSON is one image in `prune -o json`.
type pruneItemJSON struct {
	ImageID     string              `json:"image_id"`
	Name        string              `json:"name"`
	ServerID    string              `json:"server_id"`
	ServerName  string              `json:"server_name"`
	Slot        time.Time           `json:"slot"`
	AgeSeconds  int64               `json:"age_seconds"`
	State       string              `json:"state"`
	Action      string              `json:"action"`
	Reasons     []string            `json:"reasons"`
	Snapshots   []pruneSnapshotJSON `json:"snapshots,omitempty"`
	NextAttempt *time.Time          `json:"next_attempt,omitempty"`
}

type pruneSnapshotJSON struct {
	SnapshotID string `json:"snapshot_id"`
	State      string `json:"state"`
	Reason     string `json:"reason,omitempty"`
}

// pruneReportJSON is one policy in `prune -o json`.
type pruneReportJSON struct {
	Policy           string          `json:"policy"`
	DryRun           bool            `json:"dry_run"`
	Inactive         string          `json:"inactive,omitempty"`
	Servers          int             `json:"servers"`
	ServersGone      int             `json:"servers_gone"`
	Counts           map[string]int  `json:"counts"`
	SnapshotsDeleted int             `json:"snapshots_deleted"`
	Images           []pruneItemJSON `json:"images"`
}

func toPruneJSON(rep *scheduler.PruneReport) pruneReportJSON {
	out := pruneReportJSON{Policy: rep.Policy, DryRun: rep.DryRun, Inactive: rep.Inactive, Servers: rep.Servers, ServersGone: rep.ServersGone,
		Counts: map[string]int{}, SnapshotsDeleted: rep.SnapshotsDeleted, Images: []pruneItemJSON{}}
	for a, n := range rep.Counts {
		out.Counts[string(a)] = n
	}
	for _, it := range rep.Items {
		j := pruneItemJSON{ImageID: it.ImageID, Name: it.Name, ServerID: it.ServerID, ServerName: it.ServerName, Slot: it.Slot,
			AgeSeconds: int64(it.Age / time.Second), State: string(it.State), Action: string(it.Action), Reasons: it.Reasons,
			NextAttempt: optTime(it.NextAttempt)}
		for _, sn := range it.Snapshots {
			j.Snapshots = append(j.Snapshots, pruneSnapshotJSON{SnapshotID: sn.SnapshotID, State: string(sn.State), Reason: sn.Reason})
		}
		out.Images = append(out.Images, j)
	}
	return out
}

// runPrune applies retention to one policy or all of them. Without --dry-run it
// deletes through the journal and reports what it did; with it, it changes nothing
// in the cloud or the lineage and shows what it would do. Exit 1 when a prune could
// not decide (the lineage or the server list could not be read) or a guard rail
// refused a deletion.
func runPrune(ctx context.Context, m *Main, o *pruneOptions) error {
	wired, err := o.wire(ctx, wireOptions{policy: o.policy, store: true, exclusive: !o.dryRun, cloud: true})
	if err != nil {
		return err
	}
	defer wired.close()
	shared := wired.shared(scheduler.SharedOptions{PollInterval: m.PollInterval, MaxPollInterval: 4 * m.PollInterval})

	// Retention asks the file's config for each policy by name, as the daemon's asks
	// the config in force: a disabled policy is reported, not pruned.
	retention := scheduler.NewRetention(shared, wired.configs(), scheduler.RetentionOptions{})
	var reports []*scheduler.PruneReport
	var failures []string
	for _, p := range wired.policies {
		rep, err := retention.Prune(ctx, p.Name, scheduler.PruneOptions{DryRun: o.dryRun, Full: true, SnapshotWait: m.SnapshotWait})
		if err != nil {
			failures = append(failures, err.Error())
			if ctx.Err() != nil {
				break
			}
			continue
		}
		reports = append(reports, rep)
	}
	if o.json() {
		out := make([]pruneReportJSON, 0, len(reports))
		for _, rep := range reports {
			out = append(out, toPruneJSON(rep))
		}
		if err := writeJSON(m.Stdout, out); err != nil {
			return err
		}
	} else if err := printPruneTable(m.Stdout, reports); err != nil {
		return err
	}
	refused := 0
	for _, rep := range reports {
		refused += rep.Counts[scheduler.PruneRefused]
	}
	switch {
	case len(failures) > 0:
		return withExitCode(exitFailure, errors.New(strings.Join(failures, "; ")))
	case refused > 0:
		return withExitCode(exitFailure, fmt.Errorf("%s refused by a guard rail (see the reasons above)",
			plural(refused, "deletion", "deletions")))
	}
	return nil
}

// printPruneTable prints one table per policy (image, server, age, decision,
// reason) and a summary line.
func printPruneTable(w io.Writer, reports []*scheduler.PruneReport) error {
	for i, rep := range reports {
		if i > 0 {
			fmt.Fprintln(w)
		}
		t := newTable(w, "IMAGE", "SERVER", "AGE", "DECISION", "REASON")
		for _, it := range rep.Items {
			image := cmp.Or(it.Name, fmt.Sprintf("(row %d)", it.ImageRow))
			reason := strings.Join(it.Reasons, "; ")
			for _, sn := range it.Snapshots {
				if sn.State != "deleted" {
					reason += fmt.Sprintf("; snapshot %s %s", sn.SnapshotID, sn.State)
					if sn.Reason != "" {
						reason += ": " + sn.Reason
					}
				}
			}
			if !it.NextAttempt.IsZero() && (it.Action == scheduler.PrunePending || it.Action == scheduler.PruneProtected) {
				reason += "; next attempt " + it.NextAttempt.Local().Format("2006-01-02 15:04 MST")
			}
			t.row(image, cmp.Or(it.ServerName, it.ServerID), formatAge(it.Age), decision(it.Action), reason)
		}
		if err := t.flush(); err != nil {
			return err
		}
		fmt.Fprintln(w, pruneSummary(rep))
	}
	return nil
}

// decision is how the table shows an action: a protected image is kept, and says why.
func decision(a scheduler.PruneAction) string {
	if a == scheduler.PruneProtected {
		return "keep (protected)"
	}
	return string(a)
}

// pruneSummary is the last line of a policy's prune, e.g.
// "nightly: 4 deleted, 4 kept, 1 pending (8 snapshots deleted) over 2 servers".
func pruneSummary(rep *scheduler.PruneReport) string {
	if rep.Inactive != "" {
		return fmt.Sprintf("%s: not pruned: %s", rep.Policy, rep.Inactive)
	}
	var parts []string
	for _, a := range []scheduler.PruneAction{scheduler.PruneDeleted, scheduler.PruneDelete, scheduler.PruneKeep,
		scheduler.PrunePending, scheduler.PruneProtected, scheduler.PruneDeferred, scheduler.PruneRefused} {
		if n := rep.Counts[a]; n > 0 {
			word := string(a)
			if a == scheduler.PruneDelete {
				word = "to delete"
			}
			parts = append(parts, fmt.Sprintf("%d %s", n, word))
		}
	}
	if len(parts) == 0 {
		parts = []string{"no images"}
	}
	s := fmt.Sprintf("%s: %s", rep.Policy, strings.Join(parts, ", "))
	if rep.SnapshotsDeleted > 0 {
		s += fmt.Sprintf(" (%s deleted)", plural(rep.SnapshotsDeleted, "volume snapshot", "volume snapshots"))
	}
	s += " over " + plural(rep.Servers, "server", "servers")
	if rep.ServersGone > 0 {
		s += fmt.Sprintf(" (%d gone or no longer selected)", rep.ServersGone)
	}
	if rep.DryRun {
		s += " [dry run: nothing changed]"
	}
	return s
}

// formatAge renders an age coarsely: "3d4h", "5h12m", "42m", "-3h" for the future.
func formatAge(d time.Duration) string {
	if d < 0 {
		return "-" + formatAge(-d)
	}
	switch {
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	default:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
}
