package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/imagekeeper/imagekeeper/scheduler"
)

func init() {
	register(command{
		name:    "reconcile",
		summary: "diff the cloud's stamped images and snapshots against the lineage (--fix to act)",
		run:     runReconcile,
	})
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
func runReconcile(ctx context.Context, m *Main, args []string) error {
	fs := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	configPath := fs.String("config", defaultConfigPath, "policy file")
	fix := fs.Bool("fix", false, "adopt, mark and delete leftovers (default: report only)")
	output := fs.String("o", "table", "output: table or json")
	lf := addLogFlags(fs)
	lf.level = "warn"
	fs.Lookup("log-level").DefValue = "warn"
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError("%v", err)
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	if err := checkOutput(*output); err != nil {
		return err
	}
	log, err := lf.logger(m.Stderr)
	if err != nil {
		return usageError("%v", err)
	}
	cfg, err := wireConfig(m, *configPath)
	if err != nil {
		return err
	}
	st, err := wireStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	cl, err := wireCloud(ctx, cfg, log, nil)
	if err != nil {
		return err
	}
	runner := scheduler.NewRunner(scheduler.RunnerOptions{Cloud: cl, Store: st, Limits: cfg.Limits, Logger: log.With("command", "reconcile"),
		PollInterval: prunePollInterval, MaxPollInterval: 4 * prunePollInterval})
	rep, err := runner.Reconcile(ctx, cfg, *fix)
	if err != nil {
		return withExitCode(exitFailure, err)
	}
	if *output == "json" {
		out := reconcileJSON{Fix: rep.Fix, CloudImages: rep.CloudImages, CloudSnapshots: rep.CloudSnapshots,
			Counts: map[string]int{}, Fixed: map[string]int{}, Findings: []driftJSON{}}
		for _, c := range scheduler.DriftCategories {
			out.Counts[string(c)] = rep.Counts[c]
			out.Fixed[string(c)] = rep.Fixed[c]
		}
		for _, f := range rep.Findings {
			out.Findings = append(out.Findings, driftJSON{Category: string(f.Category), Policy: f.Policy, ServerID: f.ServerID,
				ImageID: f.ImageID, SnapshotID: f.SnapshotID, Detail: f.Detail, Action: f.Action})
		}
		enc := json.NewEncoder(m.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	printReconcile(m.Stdout, rep)
	return nil
}

func printReconcile(w io.Writer, rep *scheduler.ReconcileReport) {
	if len(rep.Findings) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CATEGORY\tPOLICY\tSERVER\tIMAGE\tSNAPSHOT\tDETAIL\tACTION")
		dash := func(s string) string {
			if s == "" {
				return "-"
			}
			return s
		}
		for _, f := range rep.Findings {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Category, dash(f.Policy), dash(f.ServerID), dash(f.ImageID),
				dash(f.SnapshotID), f.Detail, dash(f.Action))
		}
		tw.Flush()
	}
	var parts []string
	for _, c := range scheduler.DriftCategories {
		s := fmt.Sprintf("%s %d", c, rep.Counts[c])
		if rep.Fixed[c] > 0 {
			s += fmt.Sprintf(" (%d fixed)", rep.Fixed[c])
		}
		parts = append(parts, s)
	}
	mode := "report only; --fix to act"
	if rep.Fix {
		mode = "fix"
	}
	fmt.Fprintf(w, "reconcile (%s): %d stamped images, %d snapshots in the cloud: %s\n", mode, rep.CloudImages,
		rep.CloudSnapshots, strings.Join(parts, ", "))
}
