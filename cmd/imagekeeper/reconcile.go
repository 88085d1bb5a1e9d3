package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/scheduler"
)

// reconcileOptions are the flags of `imagekeeper reconcile`.
type reconcileOptions struct {
	*common
	fix bool
}

// newReconcileCommand builds `imagekeeper reconcile`.
func newReconcileCommand(m *Main) *cobra.Command {
	o := &reconcileOptions{}
	cmd := &cobra.Command{
		Use:   "reconcile [--fix]",
		Short: "diff the cloud's stamped images and snapshots against the lineage (--fix to act)",
		Long: `Lists every image and volume snapshot in the cloud that carries this
installation's stamp and compares them with the lineage, reporting drift by
category, and what it would do about each: without --fix it changes nothing.
With --fix it adopts stamped images that match an intent row, marks rows whose
image is gone, and deletes leftover snapshots. Images it cannot prove ours are
never touched. When a daemon serves the lineage, the daemon does the work.`,
		Example: `  imagekeeper reconcile
  imagekeeper reconcile --fix -o json`,
		Args: noArgs,
		RunE: inDaemonOr(o, func(cmd *cobra.Command, args []string) error {
			return runReconcile(cmd.Context(), m, o)
		}),
	}
	o.common = newCommon(m, cmd).withConfig().withOutput().withLogs("warn")
	cmd.Flags().BoolVar(&o.fix, "fix", false, "mark rows whose image is gone, adopt what is provably ours and delete leftover snapshots (default: report only, change nothing)")
	return cmd
}

type driftJSON struct {
	Category   string `json:"category"`
	Policy     string `json:"policy,omitempty"`
	ServerID   string `json:"server_id,omitempty"`
	ImageID    string `json:"image_id,omitempty"`
	SnapshotID string `json:"snapshot_id,omitempty"`
	Detail     string `json:"detail"`
	Action     string `json:"action,omitempty"`
}

type reconcileJSON struct {
	Fix            bool           `json:"fix"`
	ReportOnly     bool           `json:"report_only"`
	CloudImages    int            `json:"cloud_images"`
	CloudSnapshots int            `json:"cloud_snapshots"`
	Counts         map[string]int `json:"counts"`
	Fixed          map[string]int `json:"fixed"`
	Findings       []driftJSON    `json:"findings"`
}

// runReconcile reports drift between the cloud and the lineage by category. With
// --fix it adopts stamped images that match an intent row, marks rows whose image
// is gone, and deletes leftover snapshots; snapshots of images the journal recorded
// deleted are deleted even without --fix. Images it cannot prove ours are never
// touched.
func runReconcile(ctx context.Context, m *Main, o *reconcileOptions) error {
	wired, err := o.wire(ctx, wireOptions{store: true, exclusive: o.fix, cloud: true})
	if err != nil {
		return err
	}
	defer wired.close()
	rc := scheduler.NewReconciler(wired.shared(scheduler.SharedOptions{PollInterval: m.PollInterval, MaxPollInterval: 4 * m.PollInterval}))
	reconcile := rc.ReconcilePreview
	if o.fix {
		reconcile = func(ctx context.Context, cfg *policy.Config) (*scheduler.ReconcileReport, error) {
			return rc.Reconcile(ctx, cfg, true)
		}
	}
	rep, err := reconcile(ctx, wired.cfg)
	if err != nil {
		return withExitCode(exitFailure, err)
	}
	if o.json() {
		out := reconcileJSON{Fix: rep.Fix, ReportOnly: rep.ReportOnly, CloudImages: rep.CloudImages, CloudSnapshots: rep.CloudSnapshots,
			Counts: map[string]int{}, Fixed: map[string]int{}, Findings: []driftJSON{}}
		for _, c := range scheduler.DriftCategories {
			out.Counts[string(c)] = rep.Counts[c]
			out.Fixed[string(c)] = rep.Fixed[c]
		}
		for _, f := range rep.Findings {
			out.Findings = append(out.Findings, driftJSON{Category: string(f.Category), Policy: f.Policy, ServerID: f.ServerID,
				ImageID: f.ImageID, SnapshotID: f.SnapshotID, Detail: f.Detail, Action: f.Action})
		}
		return writeJSON(m.Stdout, out)
	}
	return printReconcile(m.Stdout, rep)
}

// printReconcile prints the findings, one row each, and a line of counts per
// category.
func printReconcile(w io.Writer, rep *scheduler.ReconcileReport) error {
	if len(rep.Findings) > 0 {
		t := newTable(w, "CATEGORY", "POLICY", "SERVER", "IMAGE", "SNAPSHOT", "DETAIL", "ACTION")
		for _, f := range rep.Findings {
			t.row(f.Category, orDash(f.Policy), orDash(f.ServerID), orDash(f.ImageID), orDash(f.SnapshotID), f.Detail, orDash(f.Action))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	var parts []string
	for _, c := range scheduler.DriftCategories {
		s := fmt.Sprintf("%s %d", c, rep.Counts[c])
		if rep.Fixed[c] > 0 {
			s += fmt.Sprintf(" (%d fixed)", rep.Fixed[c])
		}
		parts = append(parts, s)
	}
	mode := "report only, nothing changed; --fix to act"
	if rep.Fix {
		mode = "fix"
	}
	fmt.Fprintf(w, "reconcile (%s): %s, %s in the cloud: %s\n", mode, plural(rep.CloudImages, "stamped image", "stamped images"),
		plural(rep.CloudSnapshots, "snapshot", "snapshots"), strings.Join(parts, ", "))
	return nil
}
